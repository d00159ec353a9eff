"""Reads a dataset directory's manifest and statistics: bounded, validated, local or remote.

The readers of :mod:`~actionprior.data.writer`'s files, apart from it, so that everything that only reads a
dataset (training, inference comparing statistics, ``data check``) does not import the writer's WebDataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from actionprior.data import limits
from actionprior.data.location import open_file, shown_path
from actionprior.data.safe_json import loads_bounded, read_bounded
from actionprior.data.schema import (
    MANIFEST_FILE,
    STATS_FILE,
    DataError,
    bookkeeping_problems,
    manifest_problems,
    show,
)
from actionprior.data.stats import stats_fingerprint, stats_problems, stats_spec_problems

log = logging.getLogger(__name__)


def read_dataset_json(location: str | Path, name: str, max_bytes: int) -> Any:
    """Bounded JSON file ``name`` of a local or remote dataset (see :mod:`actionprior.data.location`)."""
    where = shown_path(location, name)
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
    where = shown_path(directory, MANIFEST_FILE)
    try:
        manifest = read_dataset_json(directory, MANIFEST_FILE, limits.MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise DataError(f"{where}: no manifest; is '{directory}' a dataset written by actionprior?") from None
    problems = manifest_problems(manifest)
    if not problems:
        problems = [message for _, message in bookkeeping_problems(manifest["shards"])]
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


def load_stats(directory: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated per-embodiment statistics of a dataset (finite, within the sanity cap, ordered, and
    matching the ``fingerprint`` the file records: a stats.json changed after it was written is refused).

    Given the dataset's (validated) ``manifest``, they must also cover each of its embodiments with the
    spec's dims; statistics counting other transitions than the manifest lists (stale) are used with a
    warning, unless they are joint statistics over several datasets (``joint_over``).
    """
    where = shown_path(directory, STATS_FILE)
    fix = f"run `actionprior data stats {directory} --recompute`"
    try:
        payload = read_dataset_json(directory, STATS_FILE, limits.MAX_STATS_BYTES)
    except FileNotFoundError:
        raise DataError(f"{where}: no statistics; {fix}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("embodiments"), dict):
        raise DataError(f"{where}: must be an object with an 'embodiments' object; {fix}")
    stats = payload["embodiments"]
    problems = stats_problems(stats) or fingerprint_problems(payload)
    if not problems and manifest is not None:
        problems = stats_spec_problems(stats, manifest_dims(manifest))
    if problems:
        raise DataError(f"{where}: {problems[0]}; {fix}")
    if manifest is not None and "joint_over" not in payload:
        stale = stale_stats(stats, manifest)
        if stale:
            log.warning("%s: %s; %s", where, stale, fix)
    return stats


def fingerprint_problems(payload: dict[str, Any]) -> list[str]:
    """A stats.json whose recorded ``fingerprint`` is not that of the statistics it holds (edited or damaged
    after it was written; a file without one is not checked)."""
    recorded = payload.get("fingerprint")
    actual = stats_fingerprint(payload["embodiments"])
    if recorded is None or recorded == actual:
        return []
    return [
        f"its fingerprint {show(recorded)} is not that of the statistics it holds ({actual}): the file was "
        "changed after it was written"
    ]


def manifest_dims(manifest: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``name -> (state_dim, action_dim)`` of the embodiments of a validated manifest."""
    return {
        name: (len(spec["state_names"]), len(spec["action_names"]))
        for name, spec in manifest["embodiments"].items()
    }


def stale_stats(stats: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    """Why statistics do not count the transitions the manifest lists, or None."""
    listed: dict[str, int] = {}
    for shard in manifest["shards"]:
        for e in shard["episodes"]:
            listed[e["embodiment"]] = listed.get(e["embodiment"], 0) + e["length"]
    for name, count in sorted(listed.items()):
        recorded = stats.get(name, {}).get("num_transitions")
        if recorded is not None and recorded != count:
            return f"stale statistics for '{name}': {show(recorded)} transitions, manifest.json lists {count}"
    return None
