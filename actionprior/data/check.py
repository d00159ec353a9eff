"""``actionprior data check DIR``: validate a dataset and report every problem with its file and sample key.

Checks the manifest (presence, bounded JSON, schema version, types and names of every entry, embodiment
specs), the agreement between manifest and shards (files, episode keys, counts, duplicate keys), every
sample of every tar (readable, fields present, meta.json types, dtypes, finite values within the sanity cap,
dims against the embodiment spec, cameras against the spec, frames present, decodable and of one size per
camera across the dataset) and ``stats.json`` (present, finite and ordered, covering every embodiment with
the right dims, not stale). Every reader is bounded (:mod:`actionprior.data.limits`); nothing a dataset
holds makes this command run a command, read outside the folder or print a traceback.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionprior.data import limits
from actionprior.data.location import contained, open_local
from actionprior.data.safe_json import read_json_file
from actionprior.data.schema import (
    FRAME_FIELD,
    MANIFEST_FILE,
    OBS_PREFIX,
    SAFE_FILE_NAME,
    SCHEMA_VERSION,
    STATS_FILE,
    TRAJ_PREFIX,
    DataError,
    decode_png,
    decode_trajectory,
    frame_field,
    png_size,
    shard_problems,
    show,
    spec_problems,
)
from actionprior.data.stats import stats_problems
from actionprior.data.tario import iter_tar_samples
from actionprior.embodiments import EmbodimentError, EmbodimentSpec

MAX_PROBLEMS = 1000  # a badly broken dataset is summarised, not printed in full
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Problem:
    file: str
    key: str  # sample key, or "" for file-level problems
    message: str


class _Report:
    def __init__(self, directory: Path):
        self.dir = directory
        self.problems: list[Problem] = []
        self.dropped = 0
        # Dataset-wide consistency: where each episode key was seen per view, each camera's frame size.
        self.sample_seen: dict[tuple[str, str], str] = {}
        self.frame_sizes: dict[str, tuple[tuple[int, int], str]] = {}
        self.skipped_shards = False  # transition counts are partial: no staleness verdict on stats.json

    def add(self, file: str | Path, key: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        # One line each, whatever the file held: control characters and length are cut.
        clean = _CONTROL.sub("?", message)
        self.problems.append(Problem(str(file), _CONTROL.sub("?", key)[:120], clean[:500]))


def check_dataset(directory: str | Path, decode_frames: bool = True) -> list[Problem]:
    """Every problem found in the dataset at ``directory`` (empty when valid)."""
    directory = Path(directory)
    report = _Report(directory)
    try:
        _check(directory, report, decode_frames)
    except Exception as exc:  # a bug here must still end in one line, not a traceback
        report.add(directory, "", f"internal error while checking ({type(exc).__name__}: {str(exc)[:200]})")
    if report.dropped:
        report.problems.append(Problem(str(directory), "", f"... and {report.dropped} more problems"))
    return report.problems


def _check(directory: Path, report: _Report, decode_frames: bool) -> None:
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        report.add(directory, "", "not a directory")
        return
    if not manifest_path.exists():
        report.add(manifest_path, "", "missing manifest.json; is this a dataset written by actionprior?")
        return
    if not contained(directory, MANIFEST_FILE):
        report.add(manifest_path, "", "resolves outside the dataset folder (a symlink); not read")
        return
    try:
        manifest = read_json_file(manifest_path, limits.MAX_MANIFEST_BYTES)
    except DataError as exc:
        report.add(manifest_path, "", f"unreadable manifest ({str(exc).removeprefix(f'{manifest_path}: ')})")
        return
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        report.add(
            manifest_path, "", f"schema_version {show(version)}, this actionprior reads {SCHEMA_VERSION}"
        )
        return
    specs = _check_specs(manifest, manifest_path, report)
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        report.add(manifest_path, "", f"manifest has no 'shards' list (got {show(shards)})")
        return
    transitions: dict[str, int] = {}
    seen_keys: dict[str, str] = {}
    listed_files: set[str] = set()
    trajectory_only = manifest.get("views") == ["trajectory"]  # data collect --no-images: "obs": null
    for index, shard in enumerate(shards):
        problems = shard_problems(index, shard, trajectory_only)
        for field in ("traj", "obs"):
            if isinstance(shard, dict) and isinstance(shard.get(field), str):
                listed_files.add(shard[field])
        for message in problems:
            report.add(manifest_path, "", message)
        if problems:
            report.skipped_shards = True
        else:
            _check_shard(shard, specs, report, transitions, seen_keys, decode_frames)
    for path in sorted(directory.glob("*.tar")):
        if path.name not in listed_files and path.name.startswith((TRAJ_PREFIX, OBS_PREFIX)):
            report.add(path, "", "shard file not listed in manifest.json")
    _check_stats(directory, specs, transitions, report)


def _check_specs(manifest: dict[str, Any], path: Path, report: _Report) -> dict[str, EmbodimentSpec]:
    specs: dict[str, EmbodimentSpec] = {}
    embodiments = manifest.get("embodiments")
    if not isinstance(embodiments, dict) or not embodiments:
        report.add(path, "", f"manifest has no 'embodiments' specs (got {show(embodiments)})")
        return specs
    for name, data in embodiments.items():
        problems = spec_problems(name, data)
        for message in problems:
            report.add(path, "", message)
        if problems:
            continue
        try:
            specs[name] = EmbodimentSpec.from_dict(data, source=f"{path} embodiments.{name}")
        except (EmbodimentError, TypeError, ValueError) as exc:
            report.add(path, "", f"embodiment {show(name)}: {str(exc)[:300]}")
    return specs


def _check_shard(
    shard: dict[str, Any],
    specs: dict[str, EmbodimentSpec],
    report: _Report,
    transitions: dict[str, int],
    seen_keys: dict[str, str],
    decode_frames: bool,
) -> None:
    """One manifest entry (already type-checked by ``shard_problems``) against its two tar files."""
    manifest_path = report.dir / MANIFEST_FILE
    name = shard["name"]
    entries: dict[str, dict[str, Any]] = {}
    for e in shard["episodes"]:
        if e["key"] in entries:
            report.add(manifest_path, e["key"], f"episode key listed twice in shard '{name}'")
        entries[e["key"]] = e
    if shard["num_episodes"] != len(shard["episodes"]):
        report.add(
            manifest_path,
            "",
            f"shard '{name}': num_episodes {shard['num_episodes']} but {len(shard['episodes'])} listed",
        )
    listed_transitions = sum(e["length"] for e in shard["episodes"])
    if shard["num_transitions"] != listed_transitions:
        report.add(
            manifest_path,
            "",
            f"shard '{name}': num_transitions {shard['num_transitions']} but episodes sum to "
            f"{listed_transitions}",
        )
    for key in entries:
        if key in seen_keys:
            report.add(manifest_path, key, f"episode key listed in shards '{seen_keys[key]}' and '{name}'")
        seen_keys[key] = name
    for field, with_frames in (("traj", False), ("obs", True)):
        if field == "obs" and shard[field] is None:  # a trajectory-only dataset (collect --no-images)
            continue
        path = report.dir / shard[field]
        if not path.exists():
            report.add(path, "", f"shard file listed in manifest.json (shard '{name}') is missing")
            continue
        if not contained(report.dir, shard[field]) or not path.is_file():
            report.add(path, "", "not a regular file inside the dataset folder (a symlink out?); not read")
            continue
        found: set[str] = set()
        for key, sample in _samples(path, report):
            if (field, key) in report.sample_seen:
                report.add(path, key, f"episode appears twice (also in {report.sample_seen[field, key]})")
                continue
            report.sample_seen[field, key] = path.name
            found.add(key)
            entry = entries.get(key)
            if entry is None:
                report.add(path, key, f"sample not listed in manifest.json under shard '{name}'")
            lengths = _check_sample(path, key, sample, entry, specs, report, with_frames, decode_frames)
            if lengths is not None and not with_frames:
                emb, length = lengths
                transitions[emb] = transitions.get(emb, 0) + length
        for key in sorted(set(entries) - found):
            report.add(path, key, "episode listed in manifest.json but absent from the shard")


def _samples(path: Path, report: _Report) -> Iterator[tuple[str, dict[str, Any]]]:
    last = ""
    try:
        with open_local(path) as stream:
            for sample in iter_tar_samples(stream, str(path)):
                last = sample["__key__"]
                yield last, sample
    except OSError as exc:
        report.add(path, last and f"after {last}", f"unreadable shard ({exc.strerror or exc})")
    except DataError as exc:
        message = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}:")
        report.add(path, last and f"after {last}", f"unreadable or truncated tar: {message}")


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
    if not SAFE_FILE_NAME.match(key) or "." in key:
        report.add(path, key, "sample key must be letters, digits, '_' and '-'")
    try:
        state, action, meta = decode_trajectory(sample, where)
    except DataError as exc:
        report.add(path, key, str(exc).removeprefix(f"{where}: ").removeprefix(f"{where} "))
        return None
    name = meta["embodiment"]
    ok = True
    if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        report.add(
            path, key, f"meta.json schema_version {show(meta['schema_version'])}, expected {SCHEMA_VERSION}"
        )
    spec = specs.get(name)
    if spec is None:
        report.add(path, key, f"embodiment {show(name)} has no spec in manifest.json")
        ok = False
    else:
        for label, arr, dim in (("state", state, spec.state_dim), ("action", action, spec.action_dim)):
            if arr.shape[1] != dim:
                report.add(path, key, f"{label} dim {arr.shape[1]}, embodiment '{name}' spec says {dim}")
                ok = False
    if entry is not None:
        for field, value in (("embodiment", name), ("length", len(state))):
            if entry.get(field) != value:
                report.add(
                    path, key, f"{field} is {show(value)} but manifest.json says {show(entry.get(field))}"
                )
    if with_frames:
        _check_frames(path, key, sample, meta, spec, len(state), report, decode_frames)
    return (name, len(state)) if ok else None


def _check_frames(
    path: Path,
    key: str,
    sample: dict[str, Any],
    meta: dict[str, Any],
    spec: EmbodimentSpec | None,
    length: int,
    report: _Report,
    decode: bool,
) -> None:
    cameras = meta.get("cameras", [])
    if spec is not None and cameras and sorted(cameras) != sorted(spec.cameras):
        report.add(
            path,
            key,
            f"meta.json cameras {sorted(cameras)} disagree with the cameras {sorted(spec.cameras)} of "
            f"embodiment '{spec.name}' in manifest.json",
        )
    if len(cameras) * length > limits.MAX_MEMBERS_PER_SAMPLE:
        report.add(
            path,
            key,
            f"meta.json announces {len(cameras)} cameras x {length} steps of frames, over the cap of "
            f"{limits.MAX_MEMBERS_PER_SAMPLE} fields per sample",
        )
        return
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
    reported: set[str] = set()
    for field in sorted(expected & present):
        cam = field.split(".", 1)[0]
        try:
            if decode:
                frame = decode_png(sample[field], f"{path}:{key} {field}")
                size = (frame.shape[1], frame.shape[0])
            else:
                size = png_size(sample[field], f"{path}:{key} {field}")
                if size[0] * size[1] > limits.MAX_IMAGE_PIXELS:
                    raise DataError(f"PNG declares {size[0]}x{size[1]} pixels, over the cap")
        except DataError as exc:
            report.add(path, key, f"{field}: undecodable PNG ({str(exc).rsplit(': ', 1)[-1]})")
            continue
        first, seen_at = report.frame_sizes.setdefault(cam, (size, f"{path.name}:{key}"))
        if size != first and cam not in reported:
            reported.add(cam)
            report.add(
                path,
                key,
                f"{field}: frame size {size[0]}x{size[1]} differs from {first[0]}x{first[1]} of camera "
                f"'{cam}' in {seen_at} (one size per camera)",
            )


def _check_stats(
    directory: Path, specs: dict[str, EmbodimentSpec], transitions: dict[str, int], report: _Report
):
    path = directory / STATS_FILE
    fix = f"run `actionprior data stats {directory} --recompute`"
    if not path.exists():
        report.add(path, "", f"missing stats.json; {fix}")
        return
    if not contained(directory, STATS_FILE):
        report.add(path, "", "resolves outside the dataset folder (a symlink); not read")
        return
    try:
        payload = read_json_file(path, limits.MAX_STATS_BYTES)
    except DataError as exc:
        report.add(path, "", f"unreadable stats.json ({str(exc).removeprefix(f'{path}: ')}); {fix}")
        return
    stats = payload.get("embodiments") if isinstance(payload, dict) else None
    if not isinstance(stats, dict):
        report.add(path, "", f"stats.json has no 'embodiments' object; {fix}")
        return
    for message in stats_problems(stats):
        report.add(path, "", f"{message}; {fix}")
    for name, spec in specs.items():
        entry = stats.get(name)
        if not isinstance(entry, dict):
            report.add(path, "", f"no statistics for embodiment '{name}'; {fix}")
            continue
        for kind, dim in (("state", spec.state_dim), ("action", spec.action_dim)):
            part = entry.get(kind)
            got = (
                len(part.get("mean", []))
                if isinstance(part, dict) and isinstance(part.get("mean"), list)
                else 0
            )
            if got != dim:
                report.add(path, "", f"'{name}' {kind} statistics have {got} dims, spec has {dim}; {fix}")
        stale = name in transitions and entry.get("num_transitions") != transitions[name]
        if stale and not report.skipped_shards:
            report.add(
                path,
                "",
                f"stale statistics for '{name}': {show(entry.get('num_transitions'))} transitions, "
                f"shards hold {transitions[name]}; {fix}",
            )


def problem_line(problem: Problem, directory: str | Path) -> str:
    """``file:key: message`` (file relative to the dataset when inside it), one line."""
    file = Path(problem.file)
    shown = file.name if file.parent == Path(directory) else problem.file
    return f"{shown}:{problem.key}: {problem.message}" if problem.key else f"{shown}: {problem.message}"


def cli_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actionprior data check", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    parser.add_argument(
        "--no-decode-frames",
        action="store_true",
        help="check that frames exist and read their sizes from the PNG headers, but do not decode them",
    )
    args = parser.parse_args(argv)
    problems = check_dataset(args.directory, decode_frames=not args.no_decode_frames)
    if problems:
        print(f"data check {args.directory}: {len(problems)} problem(s)")
        for p in problems:
            print(problem_line(p, args.directory))
        return 1
    manifest = read_json_file(args.directory / MANIFEST_FILE, limits.MAX_MANIFEST_BYTES)
    episodes = sum(s["num_episodes"] for s in manifest["shards"])
    print(
        f"OK {args.directory}: {len(manifest['shards'])} shard pairs, {episodes} episodes, "
        f"{len(manifest['embodiments'])} embodiments"
    )
    return 0
