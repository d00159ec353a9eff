"""Reads a dataset directory's manifest and statistics: bounded, validated, local or remote.

The readers of :mod:`~actionprior.data.writer`'s files, apart from it, so that everything that only reads a
dataset (training, inference comparing statistics, ``data check``) does not import the writer's WebDataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actionprior.data import limits
from actionprior.data.location import is_remote, open_file
from actionprior.data.safe_json import loads_bounded, read_bounded
from actionprior.data.schema import MANIFEST_FILE, STATS_FILE, DataError, manifest_problems
from actionprior.data.stats import stats_problems


def read_dataset_json(location: str | Path, name: str, max_bytes: int) -> Any:
    """Bounded JSON file ``name`` of a local or remote dataset (see :mod:`actionprior.data.location`)."""
    where = f"{location}/{name}" if is_remote(location) else str(Path(location) / name)
    try:
        with open_file(location, name) as stream:
            data = read_bounded(stream, where, max_bytes)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return loads_bounded(data, where, max_bytes)


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated manifest of the dataset at ``directory`` (a local directory or a user-written
    template / URL base); shard names, episode entries and specs are checked before anything uses them."""
    where = f"{directory}/{MANIFEST_FILE}"
    try:
        manifest = read_dataset_json(directory, MANIFEST_FILE, limits.MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise DataError(f"{where}: no manifest; is '{directory}' a dataset written by actionprior?") from None
    problems = manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 1} more; run `actionprior data check`)" if len(problems) > 1 else ""
        raise DataError(f"{where}: {problems[0]}{more}")
    return manifest


ALL_VIEWS = ("trajectory", "observation")


def dataset_views(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The views a dataset can serve (both, unless its manifest says otherwise)."""
    views = manifest.get("views", list(ALL_VIEWS))
    if not isinstance(views, list) or not set(views) <= set(ALL_VIEWS) or "trajectory" not in views:
        raise DataError(
            f"manifest.json: 'views' must list 'trajectory' and optionally 'observation', got {views!r}"
        )
    return tuple(views)


def load_stats(directory: str | Path) -> dict[str, Any]:
    """The validated per-embodiment statistics of a dataset (finite, within the sanity cap, ordered)."""
    where = f"{directory}/{STATS_FILE}"
    fix = f"run `actionprior data stats {directory} --recompute`"
    try:
        payload = read_dataset_json(directory, STATS_FILE, limits.MAX_STATS_BYTES)
    except FileNotFoundError:
        raise DataError(f"{where}: no statistics; {fix}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("embodiments"), dict):
        raise DataError(f"{where}: must be an object with an 'embodiments' object; {fix}")
    problems = stats_problems(payload["embodiments"])
    if problems:
        raise DataError(f"{where}: {problems[0]}; {fix}")
    return payload["embodiments"]
