"""The real LIBERO through the policy server, with a random policy: what one episode costs here.

Serves :class:`~actionprior.inference.base.RandomPolicy` for ``libero_panda`` (both cameras, so frames really
cross the wire) in this process, and runs ``actionprior eval-libero`` against it in the LIBERO environment
(``make libero-env``). It proves the path and measures the per-step cost (physics + rendering of one control
step, and one ``act`` round trip); a random policy solves nothing.

    nice -n 15 .venv/bin/python -m benchmarks.libero_smoke --out runs/libero/smoke \\
        --suite libero_spatial --tasks 0 --episodes 1 --max-steps 20 --render-size 128

Every other option goes to ``eval-libero`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from actionprior.embodiments import EmbodimentRegistry
from actionprior.evaluation.libero.evaluate import cli_main
from actionprior.evaluation.libero.mapping import EMBODIMENT
from actionprior.inference.base import RandomPolicy
from actionprior.inference.observation import ObservationSpec
from actionprior.inference.server import PolicyServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image-size", type=int, default=64, help="what the served policy fits frames to")
    p.add_argument("--chunk-len", type=int, default=8)
    args, rest = p.parse_known_args(argv)
    registry = EmbodimentRegistry.from_dir(names=[EMBODIMENT])
    policy = RandomPolicy(
        ObservationSpec(registry, ("scene", "wrist"), args.image_size), chunk_len=args.chunk_len
    )
    with PolicyServer(policy, port=0) as server:
        code = cli_main(["--server", server.url, "--out", str(args.out), *rest])
    report = json.loads((args.out / "report.json").read_text())
    total = report["libero"]["suite_total"]
    steps = sum(e["steps"] for e in report["episodes"])
    wall = sum(e["wall_s"] for e in report["episodes"])
    print(
        f"smoke: {total['episodes']} episodes, {steps} policy steps, {total['env_step_ms']:.0f} ms per env step, "
        f"{total['act_ms']:.1f} ms per act, {wall:.0f} s of episode wall time (reset and warm-up included)"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
