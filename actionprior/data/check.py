"""``actionprior data check DIR``: validate a dataset and report every problem with its file and sample key.

Checks the manifest (presence, JSON, schema version, embodiment specs), the agreement between manifest and
shards (files, episode keys, counts), every sample of every tar (readable, fields present, dtypes, finite
values, dims against the embodiment spec, frames present and decodable) and ``stats.json`` (present,
covering every embodiment with the right dims, not stale).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from actionprior.data.schema import (
    FRAME_FIELD,
    MANIFEST_FILE,
    OBS_PREFIX,
    SCHEMA_VERSION,
    STATS_FILE,
    TRAJ_PREFIX,
    DataError,
    decode_png,
    decode_trajectory,
    frame_field,
)
from actionprior.data.tario import iter_tar_samples
from actionprior.embodiments import EmbodimentError, EmbodimentSpec


@dataclass(frozen=True)
class Problem:
    file: str
    key: str  # sample key, or "" for file-level problems
    message: str


class _Report:
    def __init__(self, directory: Path):
        self.dir = directory
        self.problems: list[Problem] = []

    def add(self, file: str | Path, key: str, message: str) -> None:
        self.problems.append(Problem(str(file), key, message))


def check_dataset(directory: str | Path, decode_frames: bool = True) -> list[Problem]:
    """Every problem found in the dataset at ``directory`` (empty when valid)."""
    directory = Path(directory)
    report = _Report(directory)
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        return [Problem(str(directory), "", "not a directory")]
    if not manifest_path.exists():
        report.add(manifest_path, "", "missing manifest.json; is this a dataset written by actionprior?")
        return report.problems
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add(manifest_path, "", f"unreadable manifest ({exc})")
        return report.problems
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        report.add(manifest_path, "", f"schema_version {version!r}, this actionprior reads {SCHEMA_VERSION}")
        return report.problems
    specs = _check_specs(manifest, manifest_path, report)
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        report.add(manifest_path, "", "manifest has no 'shards' list")
        return report.problems
    transitions: dict[str, int] = {}
    seen_keys: dict[str, str] = {}
    listed_files: set[str] = set()
    for shard in shards:
        _check_shard(shard, specs, report, transitions, seen_keys, listed_files, decode_frames)
    for path in sorted(directory.glob("*.tar")):
        if path.name not in listed_files and path.name.startswith((TRAJ_PREFIX, OBS_PREFIX)):
            report.add(path, "", "shard file not listed in manifest.json")
    _check_stats(directory, specs, transitions, report)
    return report.problems


def _check_specs(manifest: dict[str, Any], path: Path, report: _Report) -> dict[str, EmbodimentSpec]:
    specs: dict[str, EmbodimentSpec] = {}
    embodiments = manifest.get("embodiments")
    if not isinstance(embodiments, dict) or not embodiments:
        report.add(path, "", "manifest has no 'embodiments' specs")
        return specs
    for name, data in embodiments.items():
        try:
            specs[name] = EmbodimentSpec.from_dict(data, source=f"{path} embodiments.{name}")
        except (EmbodimentError, TypeError) as exc:
            report.add(path, "", f"embodiment '{name}': {exc}")
    return specs


def _check_shard(
    shard: Any,
    specs: dict[str, EmbodimentSpec],
    report: _Report,
    transitions: dict[str, int],
    seen_keys: dict[str, str],
    listed_files: set[str],
    decode_frames: bool,
) -> None:
    manifest_path = report.dir / MANIFEST_FILE
    required = ("name", "traj", "obs", "episodes", "num_episodes", "num_transitions")
    if not isinstance(shard, dict) or any(k not in shard for k in required):
        report.add(manifest_path, "", f"shard entry {shard!r:.80} lacks one of {list(required)}")
        return
    entries = {e["key"]: e for e in shard["episodes"] if isinstance(e, dict) and "key" in e}
    if len(entries) != len(shard["episodes"]):
        report.add(manifest_path, "", f"shard '{shard['name']}': malformed or duplicate episode entries")
    if shard["num_episodes"] != len(shard["episodes"]):
        report.add(
            manifest_path,
            "",
            f"shard '{shard['name']}': num_episodes {shard['num_episodes']} but {len(shard['episodes'])} listed",
        )
    listed_transitions = sum(int(e.get("length", 0)) for e in entries.values())
    if shard["num_transitions"] != listed_transitions:
        report.add(
            manifest_path,
            "",
            f"shard '{shard['name']}': num_transitions {shard['num_transitions']} but episodes sum to "
            f"{listed_transitions}",
        )
    for key in entries:
        if key in seen_keys:
            report.add(
                manifest_path, key, f"episode key listed in shards '{seen_keys[key]}' and '{shard['name']}'"
            )
        seen_keys[key] = shard["name"]
    for field, with_frames in (("traj", False), ("obs", True)):
        if field == "obs" and shard[field] is None:  # a trajectory-only dataset (collect --no-images)
            continue
        path = report.dir / shard[field]
        listed_files.add(shard[field])
        if not path.exists():
            report.add(path, "", f"shard file listed in manifest.json (shard '{shard['name']}') is missing")
            continue
        found: set[str] = set()
        for key, sample in _samples(path, report):
            found.add(key)
            entry = entries.get(key)
            if entry is None:
                report.add(path, key, f"sample not listed in manifest.json under shard '{shard['name']}'")
            lengths = _check_sample(path, key, sample, entry, specs, report, with_frames, decode_frames)
            if lengths is not None and not with_frames:
                name, length = lengths
                transitions[name] = transitions.get(name, 0) + length
        for key in sorted(set(entries) - found):
            report.add(path, key, "episode listed in manifest.json but absent from the shard")


def _samples(path: Path, report: _Report) -> Iterator[tuple[str, dict[str, Any]]]:
    last = ""
    try:
        for sample in iter_tar_samples(path.read_bytes(), str(path)):
            last = sample["__key__"]
            yield last, sample
    except (OSError, DataError) as exc:
        report.add(path, last and f"after {last}", f"unreadable or truncated tar: {exc}")


def _check_sample(
    path: Path,
    key: str,
    sample: dict[str, Any],
    entry: dict[str, Any] | None,
    specs: dict[str, EmbodimentSpec],
    report: _Report,
    with_frames: bool,
    decode_frames: bool,
) -> tuple[str, int] | None:
    where = f"{path}:{key}"
    try:
        state, action, meta = decode_trajectory(sample, where)
    except DataError as exc:
        report.add(path, key, str(exc).removeprefix(f"{where}: ").removeprefix(f"{where} "))
        return None
    name = meta["embodiment"]
    ok = True
    if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        report.add(path, key, f"meta.json schema_version {meta['schema_version']}, expected {SCHEMA_VERSION}")
    spec = specs.get(name)
    if spec is None:
        report.add(path, key, f"embodiment '{name}' has no spec in manifest.json")
        ok = False
    else:
        for label, arr, dim in (("state", state, spec.state_dim), ("action", action, spec.action_dim)):
            if arr.shape[1] != dim:
                report.add(path, key, f"{label} dim {arr.shape[1]}, embodiment '{name}' spec says {dim}")
                ok = False
    for label, arr in (("state", state), ("action", action)):
        bad = ~np.isfinite(arr)
        if bad.any():
            t, d = np.argwhere(bad)[0]
            report.add(path, key, f"{label} has {int(bad.sum())} NaN/Inf values (first at t={t}, dim={d})")
    if entry is not None:
        for field, value in (("embodiment", name), ("length", len(state))):
            if entry.get(field) != value:
                report.add(path, key, f"{field} is {value!r} but manifest.json says {entry.get(field)!r}")
    if with_frames:
        _check_frames(path, key, sample, meta, len(state), report, decode_frames)
    return (name, len(state)) if ok else None


def _check_frames(
    path: Path,
    key: str,
    sample: dict[str, Any],
    meta: dict[str, Any],
    length: int,
    report: _Report,
    decode: bool,
) -> None:
    cameras = meta.get("cameras", [])
    expected = {frame_field(cam, t) for cam in cameras for t in range(length)}
    present = {f for f in sample if FRAME_FIELD.match(f)}
    missing = sorted(expected - present)
    if missing:
        report.add(path, key, f"{len(missing)} frames missing (first: {missing[0]})")
    extra = sorted(present - expected)
    if extra:
        report.add(
            path,
            key,
            f"{len(extra)} frame fields not announced by meta.json cameras/length (first: {extra[0]})",
        )
    if not decode:
        return
    shapes: dict[str, tuple[int, ...]] = {}
    for field in sorted(expected & present):
        try:
            frame = decode_png(sample[field], f"{path}:{key} {field}")
        except DataError as exc:
            report.add(path, key, f"{field}: undecodable PNG ({exc.__cause__ or exc})")
            continue
        cam = field.split(".", 1)[0]
        if shapes.setdefault(cam, frame.shape) != frame.shape:
            report.add(
                path, key, f"{field}: frame shape {frame.shape} differs from {shapes[cam]} of earlier frames"
            )


def _check_stats(
    directory: Path, specs: dict[str, EmbodimentSpec], transitions: dict[str, int], report: _Report
):
    path = directory / STATS_FILE
    fix = f"run `actionprior data stats {directory} --recompute`"
    if not path.exists():
        report.add(path, "", f"missing stats.json; {fix}")
        return
    try:
        stats = json.loads(path.read_text())["embodiments"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        report.add(path, "", f"unreadable stats.json ({exc}); {fix}")
        return
    for name, spec in specs.items():
        entry = stats.get(name)
        if entry is None:
            report.add(path, "", f"no statistics for embodiment '{name}'; {fix}")
            continue
        for kind, dim in (("state", spec.state_dim), ("action", spec.action_dim)):
            got = len(entry.get(kind, {}).get("mean", []))
            if got != dim:
                report.add(path, "", f"'{name}' {kind} statistics have {got} dims, spec has {dim}; {fix}")
        if name in transitions and entry.get("num_transitions") != transitions[name]:
            report.add(
                path,
                "",
                f"stale statistics for '{name}': {entry.get('num_transitions')} transitions, "
                f"shards hold {transitions[name]}; {fix}",
            )


def problems_table(problems: list[Problem], directory: str | Path) -> Table:
    table = Table(title=f"data check {directory}: {len(problems)} problem(s)", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("key", overflow="fold")
    table.add_column("problem", overflow="fold")
    for p in problems:
        table.add_row(
            Path(p.file).name if Path(p.file).parent == Path(directory) else p.file, p.key, p.message
        )
    return table


def cli_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actionprior data check", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    parser.add_argument(
        "--no-decode-frames", action="store_true", help="check that frames exist but do not decode the PNGs"
    )
    args = parser.parse_args(argv)
    console = Console()
    problems = check_dataset(args.directory, decode_frames=not args.no_decode_frames)
    if problems:
        console.print(problems_table(problems, args.directory))
        return 1
    manifest = json.loads((args.directory / MANIFEST_FILE).read_text())
    episodes = sum(s["num_episodes"] for s in manifest["shards"])
    console.print(
        f"[green]OK[/green] {args.directory}: {len(manifest['shards'])} shard pairs, {episodes} episodes, "
        f"{len(manifest['embodiments'])} embodiments"
    )
    return 0
