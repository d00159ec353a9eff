"""``actionprior data check DIR``: validate a dataset and report every problem with its file and sample key.

Checks the manifest (presence, bounded JSON, schema version, types and names of every entry, embodiment
specs, counts and keys that add up), every shard file against the size and SHA-256 the manifest records
(``--no-verify`` skips that; ``--rehash`` records them for a dataset written before checksums), the agreement
between manifest and shards (files, episode keys, duplicate keys), every sample of every tar (readable, fields
present and no others, meta.json types, dtypes, finite values within the sanity cap, dims against the
embodiment spec, cameras against the spec, frames present, decodable and of one size per camera across the
dataset), what follows each tar's end, and ``stats.json`` (present, finite and ordered, its fingerprint
matching its content, covering every embodiment with the right dims, not stale). The per-sample checks are
the stream's own (:mod:`actionprior.data.verify`): what this command refuses, training refuses too. Every
reader is bounded (:mod:`actionprior.data.limits`); nothing a dataset holds makes this command run a
command, read outside the folder or print a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionprior.data import limits
from actionprior.data.checksums import FileSum, HashingReader, expected_sum, mismatch
from actionprior.data.location import contained, open_local
from actionprior.data.reader import fingerprint_problems
from actionprior.data.safe_json import read_json_file
from actionprior.data.schema import (
    MANIFEST_FILE,
    OBS_PREFIX,
    SCHEMA_VERSION,
    STATS_FILE,
    TRAJ_PREFIX,
    DataError,
    bookkeeping_problems,
    decode_trajectory,
    shard_problems,
    show,
    spec_problems,
)
from actionprior.data.stats import stats_problems, stats_spec_problems
from actionprior.data.tario import iter_tar_samples
from actionprior.data.verify import DatasetMemory, ShardAudit, skipped_member_findings
from actionprior.data.video_frames import VideoSettings, codec_problem, frames_record_problems
from actionprior.data.writer import atomic_write_json
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
        # Dataset-wide: where each episode key was seen per view, each camera's frame size.
        self.sample_seen: dict[tuple[str, str], str] = {}
        self.memory = DatasetMemory()
        self.skipped_shards = False  # transition counts are partial: no staleness verdict on stats.json
        self.computed: dict[
            tuple[int, str], FileSum
        ] = {}  # (shard index, field) -> sum, for files without one

    def add(self, file: str | Path, key: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        # One line each, whatever the file held: control characters and length are cut.
        clean = _CONTROL.sub("?", message)
        self.problems.append(Problem(str(file), _CONTROL.sub("?", key)[:120], clean[:500]))


def check_dataset(
    directory: str | Path, decode_frames: bool = True, verify: bool = True, rehash: bool = False
) -> list[Problem]:
    """Every problem found in the dataset at ``directory`` (empty when valid).

    ``verify=False`` skips the comparison of shard files with their recorded checksums. ``rehash`` records
    the checksums of shard files that have none in manifest.json, if the dataset has no problem.
    """
    directory = Path(directory)
    report = _Report(directory)
    try:
        manifest = _check(directory, report, decode_frames, verify, hashing=verify or rehash)
        if rehash and manifest is not None and not report.problems and report.computed:
            for (index, field), file_sum in sorted(report.computed.items()):
                manifest["shards"][index].setdefault("checksums", {})[field] = file_sum.to_dict()
            atomic_write_json(directory / MANIFEST_FILE, manifest)
    except Exception as exc:  # a bug here must still end in one line, not a traceback
        report.add(directory, "", f"internal error while checking ({type(exc).__name__}: {str(exc)[:200]})")
    if report.dropped:
        report.problems.append(Problem(str(directory), "", f"... and {report.dropped} more problems"))
    return report.problems


def _check(
    directory: Path, report: _Report, decode_frames: bool, verify: bool, hashing: bool
) -> dict[str, Any] | None:
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        report.add(directory, "", "not a directory")
        return None
    if not manifest_path.exists():
        report.add(manifest_path, "", "missing manifest.json; is this a dataset written by actionprior?")
        return None
    if not contained(directory, MANIFEST_FILE):
        report.add(manifest_path, "", "resolves outside the dataset folder (a symlink); not read")
        return None
    try:
        manifest = read_json_file(manifest_path, limits.MAX_MANIFEST_BYTES)
    except DataError as exc:
        report.add(manifest_path, "", f"unreadable manifest ({str(exc).removeprefix(f'{manifest_path}: ')})")
        return None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        report.add(
            manifest_path, "", f"schema_version {show(version)}, this actionprior reads {SCHEMA_VERSION}"
        )
        return None
    specs = _check_specs(manifest, manifest_path, report)
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        report.add(manifest_path, "", f"manifest has no 'shards' list (got {show(shards)})")
        return None
    transitions: dict[str, int] = {}
    listed_files: set[str] = set()
    trajectory_only = manifest.get("views") == ["trajectory"]  # data collect --no-images: "obs": null
    sound: list[tuple[int, dict[str, Any]]] = []
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
            sound.append((index, shard))
    for key, message in bookkeeping_problems([shard for _, shard in sound]):
        report.add(manifest_path, key, message)
    video = _check_frames_record(manifest, manifest_path, report)
    for index, shard in sound:
        _check_shard(index, shard, specs, report, transitions, decode_frames, verify, hashing, video)
    for path in sorted(directory.glob("*.tar")):
        if path.name not in listed_files and path.name.startswith((TRAJ_PREFIX, OBS_PREFIX)):
            report.add(path, "", "shard file not listed in manifest.json")
    _check_stats(directory, specs, transitions, report)
    return manifest


def _check_frames_record(
    manifest: dict[str, Any], path: Path, report: _Report
) -> VideoSettings | None | bool:
    """How the observation shards store frames: None (PNG), the video settings, or False when the manifest's
    ``frames`` entry is unusable (reported; the observation shards are then not read)."""
    record = manifest.get("frames")
    problems = frames_record_problems(record)
    if not problems and record is not None and record["storage"] == "video":
        problem = codec_problem(record["codec"])
        problems = [f"frames: {problem}"] if problem else []
    for message in problems:
        report.add(path, "", message)
    if problems:
        report.skipped_shards = True
        return False
    return VideoSettings.from_record(record, str(path)) if record and record["storage"] == "video" else None


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
    index: int,
    shard: dict[str, Any],
    specs: dict[str, EmbodimentSpec],
    report: _Report,
    transitions: dict[str, int],
    decode_frames: bool,
    verify: bool,
    hashing: bool,
    video: VideoSettings | None | bool = None,
) -> None:
    """One manifest entry (already type-checked by ``shard_problems``) against its two tar files (``video``:
    see :func:`_check_frames_record`; False skips the observation file)."""
    name = shard["name"]
    entries = {e["key"]: e for e in shard["episodes"]}
    cameras = {n: spec.cameras for n, spec in specs.items()}
    for field, with_frames in (("traj", False), ("obs", True)):
        if field == "obs" and (shard[field] is None or video is False):
            continue  # a trajectory-only dataset (collect --no-images), or frames stored in an unknown way
        path = report.dir / shard[field]
        if not path.exists():
            report.add(path, "", f"shard file listed in manifest.json (shard '{name}') is missing")
            continue
        if not contained(report.dir, shard[field]) or not path.is_file():
            report.add(path, "", "not a regular file inside the dataset folder (a symlink out?); not read")
            continue
        frames = ("decode" if decode_frames else "headers") if with_frames else None
        audit = ShardAudit(name, entries, cameras, frames, report.memory, video=video or None)
        expected = expected_sum(shard, field) if verify else None
        skipped: list[str] = []
        read = _ShardRead(path, report, expected, hashing, skipped)
        for key, sample in read.samples():
            if (field, key) in report.sample_seen:
                report.add(path, key, f"episode appears twice (also in {report.sample_seen[field, key]})")
                continue
            report.sample_seen[field, key] = path.name
            lengths = _check_sample(path, key, sample, specs, report, audit)
            if lengths is not None and not with_frames:
                emb, length = lengths
                transitions[emb] = transitions.get(emb, 0) + length
        for finding in skipped_member_findings(skipped) + audit.end():
            report.add(path, finding.key, finding.message)
        if read.complete and hashing and expected_sum(shard, field) is None and read.result is not None:
            report.computed[index, field] = read.result


class _ShardRead:
    """The samples of one shard file, its bytes hashed on the way (checked against ``expected``)."""

    def __init__(
        self, path: Path, report: _Report, expected: FileSum | None, hashing: bool, skipped: list[str]
    ):
        self.path = path
        self.report = report
        self.expected = expected
        self.hashing = hashing
        self.skipped = skipped
        self.complete = False  # read to its end without a refusal
        self.result: FileSum | None = None

    def samples(self) -> Iterator[tuple[str, dict[str, Any]]]:
        path, report, last = self.path, self.report, ""
        try:
            with open_local(path) as raw:
                if self.expected is not None:
                    size = os.fstat(raw.fileno()).st_size
                    if size != self.expected.size:  # the hash would differ too: one problem is enough
                        report.add(path, "", mismatch(FileSum(size, ""), self.expected) or "")
                        self.expected = None
                stream = HashingReader(raw) if self.hashing else raw
                for sample in iter_tar_samples(stream, str(path), skipped=self.skipped):
                    last = sample["__key__"]
                    yield last, sample
                if isinstance(stream, HashingReader):
                    self.result = stream.result()
            self.complete = True
        except OSError as exc:
            report.add(path, last and f"after {last}", f"unreadable shard ({exc.strerror or exc})")
        except DataError as exc:
            message = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}:")
            report.add(path, last and f"after {last}", f"unreadable or truncated tar: {message}")
        if self.complete and self.expected is not None and self.result is not None:
            problem = mismatch(self.result, self.expected)
            if problem:
                report.add(path, "", problem)


def _check_sample(
    path: Path,
    key: str,
    sample: dict[str, Any],
    specs: dict[str, EmbodimentSpec],
    report: _Report,
    audit: ShardAudit,
) -> tuple[str, int] | None:
    where = f"{path}:{key}"
    try:
        state, action, meta = decode_trajectory(sample, where)
    except DataError as exc:
        audit.found.add(key)  # present, if unreadable: not "absent from the shard" too
        report.add(path, key, str(exc).removeprefix(f"{where}: ").removeprefix(f"{where} "))
        return None
    name = meta["embodiment"]
    ok = True
    spec = specs.get(name)
    if spec is None:
        report.add(path, key, f"embodiment {show(name)} has no spec in manifest.json")
        ok = False
    else:
        for label, arr, dim in (("state", state, spec.state_dim), ("action", action, spec.action_dim)):
            if arr.shape[1] != dim:
                report.add(path, key, f"{label} dim {arr.shape[1]}, embodiment '{name}' spec says {dim}")
                ok = False
    for finding in audit.sample(str(path), sample, meta, len(state)):
        report.add(path, finding.key, finding.message)
    return (name, len(state)) if ok else None


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
    problems = stats_problems(stats)
    for message in problems or fingerprint_problems(payload):
        report.add(path, "", f"{message}; {fix}")
    dims = {name: (spec.state_dim, spec.action_dim) for name, spec in specs.items()}
    for message in stats_spec_problems(stats, dims):
        report.add(path, "", f"{message}; {fix}")
    for name in specs:
        entry = stats.get(name)
        if not isinstance(entry, dict):
            continue
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
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not compare shard files with the sizes and SHA-256 checksums manifest.json records",
    )
    parser.add_argument(
        "--rehash",
        action="store_true",
        help="record the checksums of shard files that have none (a dataset written before checksums) in "
        "manifest.json, if the check finds no problem",
    )
    args = parser.parse_args(argv)
    if args.rehash and args.no_verify:
        parser.error("--rehash verifies the checksums a dataset already has; it cannot go with --no-verify")
    before = _unsummed(args.directory)
    problems = check_dataset(
        args.directory, decode_frames=not args.no_decode_frames, verify=not args.no_verify, rehash=args.rehash
    )
    if problems:
        print(f"data check {args.directory}: {len(problems)} problem(s)")
        for p in problems:
            print(problem_line(p, args.directory))
        if args.rehash and before:
            print(f"{args.directory / MANIFEST_FILE}: no checksum added; fix the problems first")
        return 1
    manifest = read_json_file(args.directory / MANIFEST_FILE, limits.MAX_MANIFEST_BYTES)
    episodes = sum(s["num_episodes"] for s in manifest["shards"])
    print(
        f"OK {args.directory}: {len(manifest['shards'])} shard pairs, {episodes} episodes, "
        f"{len(manifest['embodiments'])} embodiments"
    )
    if args.rehash and before:
        print(f"{args.directory / MANIFEST_FILE}: recorded the checksums of {before} shard files")
    elif before:
        print(
            f"note: {args.directory / MANIFEST_FILE}: {before} shard files have no checksum (written before "
            f"checksums), so bit flips in them cannot be found; `actionprior data check {args.directory} "
            "--rehash` records them"
        )
    return 0


def _unsummed(directory: Path) -> int:
    """Shard files a (readable) manifest lists without a checksum; 0 when the manifest is unreadable."""
    try:
        manifest = read_json_file(directory / MANIFEST_FILE, limits.MAX_MANIFEST_BYTES)
        shards = manifest["shards"]
        return sum(
            isinstance(shard.get(field), str) and expected_sum(shard, field) is None
            for shard in shards
            for field in ("traj", "obs")
        )
    except Exception:  # noqa: BLE001 - whatever is wrong with it, check_dataset reports it
        return 0
