"""What every importer shares: episode validation and the parallel, resumable write loop (frames are fitted by
:mod:`actionprior.data.images`, the one implementation every path shares).

An import writes into ``OUT.partial/`` with the project's :class:`~actionprior.data.writer.DatasetWriter`
(one shard per unit of consecutive source episodes) and renames it to ``OUT`` only after the statistics
and the embodiment spec are written, so an interrupted or failed import never leaves something that
looks like a valid dataset at ``OUT``. Re-running the same command resumes: the shards the partial
manifest already lists are skipped. Units run in worker processes; the parent alone writes, in unit
order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from rich.console import Console

from actionprior.data.schema import MANIFEST_FILE, DataError, Episode
from actionprior.data.video_frames import VideoSettings
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.progress import progress_bar

DEFAULT_IMAGE_SIZE = 64
DEFAULT_SHARD_EPISODES = 10
PARTIAL_SUFFIX = ".partial"
SPEC_FILE = "embodiment.yaml"


class ImportFailure(DataError):
    """Bad source data; the message is one line naming the file (and episode) and what is wrong."""


def short_name(key: str) -> str:
    """A camera or feature key reduced to a name the shard format accepts (``observation.images.top`` -> ``top``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]) or "camera"


def parse_episode_selection(text: str | None, available: Sequence[int], where: str) -> list[int]:
    """``"0:10,15,20:22"`` (end-exclusive ranges) -> the selected episode indices, in source order."""
    if not text:
        return list(available)
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                chosen.update(range(int(a), int(b)))
            elif part:
                chosen.add(int(part))
        except ValueError:
            raise ImportFailure(f"--episodes: cannot parse '{part}' (use e.g. 0:10,15)") from None
    missing = sorted(chosen - set(available))
    if missing:
        raise ImportFailure(f"{where}: --episodes asks for episodes {missing[:5]} that the source lacks")
    return [i for i in available if i in chosen]


def check_contiguous(indices: Sequence[int], where: str) -> None:
    """Episode indices must be 0..N-1 without gaps (LeRobot and robomimic both number them so)."""
    ordered = sorted(indices)
    if len(set(ordered)) != len(ordered):
        dupes = sorted({i for i in ordered if ordered.count(i) > 1})
        raise ImportFailure(f"{where}: duplicate episode indices {dupes[:5]}")
    for expected, got in enumerate(ordered):
        if got != expected:
            raise ImportFailure(
                f"{where}: episode index gap: episode {expected} is missing (next present is {got})"
            )


def make_episode(
    *,
    key: str,
    where: str,
    embodiment: str,
    instruction: str,
    state: np.ndarray,
    action: np.ndarray,
    control_rate_hz: float,
    frames: dict[str, np.ndarray],
    extra: dict[str, Any],
    task: str | None = None,
) -> Episode:
    """An :class:`Episode` after the checks that give the one-line errors (``where`` names file and episode)."""
    if state.ndim != 2 or action.ndim != 2:
        raise ImportFailure(f"{where}: state {state.shape} and action {action.shape} must be [T, D]")
    if len(state) != len(action):
        raise ImportFailure(f"{where}: {len(state)} states but {len(action)} actions")
    if len(state) == 0:
        raise ImportFailure(f"{where}: empty episode")
    for label, arr in (("state", state), ("action", action)):
        bad = ~np.isfinite(arr)
        if bad.any():
            t, d = np.argwhere(bad)[0]
            raise ImportFailure(
                f"{where}: {label} has {int(bad.sum())} NaN/Inf values (first at t={t}, dim={d})"
            )
    for cam, f in frames.items():
        if len(f) != len(state):
            raise ImportFailure(f"{where}: camera '{cam}' has {len(f)} frames for {len(state)} steps")
    return Episode(
        key=key,
        embodiment=embodiment,
        task=task if task is not None else instruction,
        instruction=instruction,
        state=state,
        action=action,
        success=True,
        control_rate_hz=control_rate_hz,
        frames=frames,
        extra=extra,
    )


@dataclass(frozen=True)
class Unit:
    """One shard's worth of consecutive source episodes."""

    name: str
    episodes: tuple[int, ...]
    frames: int  # rows (timesteps) in these episodes, for the progress bar


def plan_units(
    prefix: str, episodes: Sequence[int], lengths: Sequence[int], shard_episodes: int
) -> list[Unit]:
    if shard_episodes <= 0:
        raise ImportFailure(f"--shard-episodes must be positive, got {shard_episodes}")
    units = []
    for start in range(0, len(episodes), shard_episodes):
        eps = tuple(episodes[start : start + shard_episodes])
        units.append(Unit(f"{prefix}_{eps[0]:06d}", eps, int(sum(lengths[start : start + shard_episodes]))))
    return units


class Source(Protocol):
    """A planned import, picklable: workers get one copy and load units from it."""

    def load_unit(self, unit: Unit) -> list[Episode]: ...


# Per worker process: what _write_unit needs, set once by the pool initializer (not pickled per unit).
_JOB: tuple[Any, Path, EmbodimentSpec, VideoSettings | None] | None = None


def _init_worker(
    source: Source, directory: Path, spec: EmbodimentSpec, video: VideoSettings | None = None
) -> None:
    global _JOB
    _JOB = (source, directory, spec, video)


def _write_unit(unit: Unit) -> tuple[Unit, dict[str, Any]]:
    """Load, check, encode and write one unit's shard pair; the manifest entry goes back to the parent.

    Encoding PNGs (or video) is as costly as decoding the video, so it happens here, in parallel, and not in
    the process that owns the manifest.
    """
    from actionprior.data.writer import check_episode_dims, write_shard_files

    assert _JOB is not None
    source, directory, spec, video = _JOB
    episodes = source.load_unit(unit)
    for ep in episodes:
        try:
            check_episode_dims(ep, spec)
        except DataError as exc:
            raise ImportFailure(str(exc)) from None
    return unit, write_shard_files(directory, unit.name, episodes, video=video)


@dataclass
class ImportReport:
    out_dir: Path
    episodes: int
    frames: int
    units_run: int
    units_skipped: int
    seconds: float
    already_complete: bool = False


def run_import(
    source: Source,
    units: Sequence[Unit],
    out_dir: str | Path,
    spec: EmbodimentSpec,
    record: dict[str, Any],
    *,
    workers: int = 2,
    console: Console | None = None,
    on_unit: Callable[[Unit], None] | None = None,
    video: VideoSettings | None = None,
) -> ImportReport:
    """Load every unit (in ``workers`` processes) and write it; resume a partial import; publish at the end.

    ``record`` describes the import (source, settings): it goes into the manifest's ``import`` section and
    a partial import is resumed only with the same record. ``on_unit`` is called after each written shard
    (tests interrupt an import with it). ``video``: frames stored as video (recorded in ``record`` too, so a
    resumed import keeps the storage); None: PNG frames.
    """
    # Imported here, not at module level: worker processes import this module but never write, and the
    # writer pulls in webdataset (and torch), seconds of start-up per spawned worker.
    from actionprior.data.reader import load_manifest
    from actionprior.data.writer import DatasetWriter

    start = time.perf_counter()
    console = console or Console()
    if video is not None:
        record = {**record, "frames": video.record()}
    out = Path(out_dir)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    total_frames = sum(u.frames for u in units)
    total_eps = sum(len(u.episodes) for u in units)
    if (out / MANIFEST_FILE).exists():
        done = load_manifest(out)
        if done.get("import") == record:
            return ImportReport(out, total_eps, total_frames, 0, len(units), 0.0, already_complete=True)
        raise ImportFailure(
            f"{out} already holds a dataset made from another source or settings; choose another --out or delete it"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportFailure(f"{out} exists and is not an actionprior dataset; choose another --out")
    writer = DatasetWriter(partial, EmbodimentRegistry([spec]), name=out.name, video=video)
    previous = writer.manifest.get("import")
    if previous is not None and previous != record:
        raise ImportFailure(
            f"{partial} is an interrupted import with other settings; re-run with the same flags or delete it"
        )
    writer.manifest["import"] = record
    todo = [u for u in units if not writer.has_shard(u.name)]
    with progress_bar(console, "frames") as progress:
        bar = progress.add_task(
            f"import {out.name}", total=total_frames, completed=total_frames - sum(u.frames for u in todo)
        )

        def record(unit: Unit, entry: dict[str, Any]) -> None:
            writer.record_shard(entry, collection={"source_episodes": list(unit.episodes)})
            progress.update(bar, advance=unit.frames)
            if on_unit is not None:
                on_unit(unit)

        if workers <= 1 or len(todo) <= 1:
            _init_worker(source, partial, spec, video)
            for unit in todo:
                record(*_write_unit(unit))
        else:
            # 'spawn': PyAV and pyarrow start threads, which do not survive a fork.
            ctx = mp.get_context("spawn")
            initargs = (source, partial, spec, video)
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=initargs) as pool:
                for unit, entry in pool.imap(_write_unit, todo):  # in order: output independent of workers
                    record(unit, entry)
    if not writer.manifest["shards"]:
        raise ImportFailure("nothing to import: no episode selected")
    writer.finalize()
    (partial / SPEC_FILE).write_text(spec_yaml(spec))
    if out.exists():
        out.rmdir()  # empty (checked above)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, out)
    return ImportReport(
        out, total_eps, total_frames, len(todo), len(units) - len(todo), time.perf_counter() - start
    )


def camera_mapping(
    text: str | None, available: Sequence[str], default: dict[str, str], where: str, what: str
) -> list[tuple[str, str]]:
    """``(short name, source key)`` of each imported camera: ``--cameras short=key,...`` or, without it, the
    ``default`` (key -> short name). Keys must be among ``available`` (``what`` names them in messages), short
    names plain (letters, digits, ``_``) and distinct."""
    if text:
        mapping = []
        for part in text.split(","):
            short, sep, key = (x.strip() for x in part.partition("="))
            if not sep or not short or not key:
                raise ImportFailure(f"--cameras: expected short=key, got '{part}'")
            mapping.append((short, key))
    else:
        mapping = [(short, key) for key, short in default.items()]
    for short, key in mapping:
        if key not in available:
            raise ImportFailure(f"{where}: {what} '{key}' not found ({what}s: {sorted(available)})")
        if short_name(short) != short:
            raise ImportFailure(f"--cameras: camera name '{short}' may hold only letters, digits and '_'")
    shorts = [s for s, _ in mapping]
    if len(set(shorts)) != len(shorts):
        raise ImportFailure(f"{where}: camera short names {shorts} collide; name them with --cameras")
    return mapping


def import_record(
    fmt: str,
    source: str,
    episodes: Sequence[int],
    shard_episodes: int,
    image: dict[str, Any],
    cameras: dict[str, str],
    spec: EmbodimentSpec,
    **details: Any,
) -> dict[str, Any]:
    """The manifest's ``import`` entry: what was imported, how (``details``: the format's own choices), into
    which spec; a resumed import must have the same one."""
    return {
        "format": fmt,
        "source": source,
        "episodes": list(episodes),
        "shard_episodes": shard_episodes,
        "image": image,
        "cameras": cameras,
        **details,
        "embodiment": spec.to_dict(),
    }


def spec_yaml(spec: EmbodimentSpec) -> str:
    header = (
        f"# Embodiment spec written by `actionprior data import` for {spec.name}.\n"
        "# Copy it to configs/embodiments/ to evaluate or serve this robot; edit gripper dims or control_mode\n"
        "# if the guesses are wrong (then re-import with --spec so the shards carry the same spec).\n"
    )
    return header + yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None, width=110)


def remove_partial(out_dir: str | Path) -> None:
    """Delete an interrupted import's ``OUT.partial`` (for ``--restart``)."""
    partial = Path(out_dir).with_name(Path(out_dir).name + PARTIAL_SUFFIX)
    if partial.exists():
        shutil.rmtree(partial)
