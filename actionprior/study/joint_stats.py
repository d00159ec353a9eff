"""One set of normalisation statistics for every dataset of the study.

The Stage 1 priors read different mixtures (1x, 4x with trajectory-only data, without Panda) and Stage 2 checks
that a prior's normalisation equals its own data's; the DataModule refuses to merge an embodiment whose
statistics differ between datasets. So the statistics of each embodiment are computed once, over the union of
all the study's datasets, and written into every dataset's ``stats.json`` (entries of its own embodiments only;
``joint_over`` names the union). ``actionprior data check`` then calls these statistics stale for a dataset
that holds only part of the union: expected here.

    python -m actionprior.study.joint_stats DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

from actionprior.data.reader import load_manifest
from actionprior.data.schema import SCHEMA_VERSION, STATS_FILE
from actionprior.data.stats import compute_stats, stats_fingerprint
from actionprior.data.writer import iter_trajectories


def write_joint_stats(directories: list[Path]) -> dict[str, dict]:
    manifests = {d: load_manifest(d) for d in directories}
    stats = compute_stats(
        itertools.chain.from_iterable(iter_trajectories(d, m) for d, m in manifests.items())
    )
    for directory, manifest in manifests.items():
        own = {name: stats[name] for name in manifest["embodiments"] if name in stats}
        payload = {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": stats_fingerprint(own),
            "embodiments": own,
            "joint_over": [str(d) for d in directories],
        }
        tmp = directory / (STATS_FILE + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, directory / STATS_FILE)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m actionprior.study.joint_stats", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("directories", nargs="+", type=Path)
    p.add_argument("--marker", type=Path, default=None, help="write the embodiments' transition counts here")
    args = p.parse_args(argv)
    stats = write_joint_stats(args.directories)
    counts = {name: entry.get("num_transitions") for name, entry in stats.items()}
    if args.marker:
        args.marker.write_text(json.dumps(counts, indent=2))
    print(f"joint statistics over {len(args.directories)} datasets: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
