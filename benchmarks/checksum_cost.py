"""What verifying shard checksums costs the stream: hash speeds, and the stream's read of a trajectory shard
from page cache with and without verification.

1. Throughput of the candidate hashes on the shard's bytes (``hashlib``'s SHA-256, BLAKE2b, BLAKE2s, SHA-1,
   MD5 and ``zlib``'s CRC-32 / Adler-32; nothing that needs a new wheel).
2. The stream's read of one trajectory shard, as :meth:`WindowStream.read_shard` does it (open, parse the
   tar, decode and check every sample, pad and normalise the episodes) with ``verify`` on (the bytes hashed
   with SHA-256 as they are read, compared with manifest.json) and off. The file is in page cache: this is
   the case where hashing costs the most relative to reading. The goal (issue 26) is <= 5 % overhead.

Rounds alternate the two settings and the median per-read time is reported (the machine may be shared).

    .venv/bin/python benchmarks/checksum_cost.py [--dataset DIR] [--shard-index 0] [--rounds 40]

Without ``--dataset`` a synthetic dataset is written once to ``--data-dir``, with trajectory shards sized like
``data collect``'s (10 episodes of 80-200 steps); ``--dataset data_shards/sim-default`` times a collected one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from actionprior.data import checksums
from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.synthetic import write_synthetic_dataset

HASHES: dict[str, Callable[[bytes], object]] = {
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "blake2b": lambda b: hashlib.blake2b(b).digest(),
    "blake2b (keyed)": lambda b: hashlib.blake2b(b, key=b"k" * 32).digest(),
    "blake2s": lambda b: hashlib.blake2s(b).digest(),
    "sha1": lambda b: hashlib.sha1(b).digest(),
    "md5": lambda b: hashlib.md5(b).digest(),
    "crc32 (zlib)": zlib.crc32,
    "adler32 (zlib)": zlib.adler32,
}


def _median_seconds(fn: Callable[[], object], repeat: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - t0) / repeat)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", type=Path, default=None, help="an existing dataset (default: a synthetic one)"
    )
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/checksum_data"))
    p.add_argument("--shard-index", type=int, default=0, help="which trajectory shard of the dataset to read")
    p.add_argument("--rounds", type=int, default=40, help="alternating rounds of each setting")
    p.add_argument("--repeat", type=int, default=10, help="reads per round")
    args = p.parse_args(argv)

    directory = args.dataset
    if directory is None:
        directory = args.data_dir
        if not (directory / "stats.json").exists():
            write_synthetic_dataset(
                directory,
                episodes_per_embodiment=10,
                length_range=(80, 200),
                shard_sizes=(10,),
                with_frames=False,
            )
    dm = ActionPriorDataModule(
        [str(directory)], view="trajectory", val_fraction=0.0, num_workers=0, cache_mb=0
    )
    stream = dm.make_stream("train")
    source = stream.sources[0]
    index = args.shard_index % len(source.files)
    file = source.files[index]
    if file.checksum is None:
        print(
            f"{file.url} has no checksum in manifest.json: run `actionprior data check {directory} --rehash`"
        )
        return 1
    data = Path(file.url).read_bytes()  # also brings the file into page cache
    size_mb = len(data) / 1e6
    print(f"shard {file.url}: {len(data)} bytes, {len(file.episodes)} episodes; {os.cpu_count()} CPUs")

    print("\nhash throughput on the shard's bytes (median of rounds):")
    for name, fn in HASHES.items():
        seconds = _median_seconds(lambda fn=fn: fn(data), args.repeat * 10, args.rounds)
        print(f"  {name:16s} {size_mb / seconds:8.0f} MB/s   {seconds * 1e6:8.1f} us per shard")

    rng = np.random.default_rng(0)
    verified = source
    unverified = dataclasses.replace(source, verify=False)
    times: dict[str, list[float]] = {"verify off": [], "verify on (sha256)": []}
    for _ in range(args.rounds):  # alternate, so that load from other processes hits both alike
        for label, src in (("verify off", unverified), ("verify on (sha256)", verified)):
            t0 = time.process_time()  # this process's CPU time: less sensitive to a shared machine
            for _ in range(args.repeat):
                stream.read_shard(src, index, rng)
            times[label].append((time.process_time() - t0) / args.repeat)
    print("\nthe stream's read of the shard (WindowStream.read_shard, CPU time per read over rounds):")
    for name, pick in (("median", statistics.median), ("min", min)):
        base, on = pick(times["verify off"]), pick(times["verify on (sha256)"])
        print(
            f"  {name:6s}  verify off {base * 1e3:7.3f} ms   verify on (sha256) {on * 1e3:7.3f} ms   "
            f"overhead {100 * (on - base) / base:+.1f} % (goal <= 5 %)"
        )
    base = statistics.median(times["verify off"])
    sha = _median_seconds(lambda: hashlib.sha256(data).digest(), args.repeat * 10, args.rounds)
    print(
        f"  SHA-256 of the shard's bytes alone: {sha * 1e6:.1f} us = {100 * sha / base:.1f} % of the read "
        f"({checksums.ALGORITHM} is what manifest.json records)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
