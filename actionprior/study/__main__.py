"""``python -m actionprior.study``: the reproduction study (the same as ``make reproduce``)."""

from actionprior.study.ablations import main

if __name__ == "__main__":
    raise SystemExit(main())
