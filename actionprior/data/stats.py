"""Per-embodiment, per-dimension normalisation statistics computed over a whole dataset."""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from actionprior.data.limits import MAX_ABS_VALUE

STAT_KEYS = ("mean", "std", "q01", "q99", "min", "max")


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    x = np.asarray(x, dtype=np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def compute_stats(episodes: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Statistics from ``(embodiment, state [T, Ds], action [T, Da])`` triples.

    Exact quantiles over all transitions: a few million transitions of a few dozen dims fit in memory.
    """
    states: dict[str, list[np.ndarray]] = {}
    actions: dict[str, list[np.ndarray]] = {}
    for name, state, action in episodes:
        states.setdefault(name, []).append(state)
        actions.setdefault(name, []).append(action)
    out: dict[str, Any] = {}
    for name in sorted(states):
        s = np.concatenate(states[name])
        a = np.concatenate(actions[name])
        out[name] = {
            "num_episodes": len(states[name]),
            "num_transitions": int(len(s)),
            "state": array_stats(s),
            "action": array_stats(a),
        }
    return out


def stats_fingerprint(stats: Mapping[str, Any]) -> str:
    """A short hash of the statistics; checkpoints and policies compare it to refuse foreign stats.
    Arrays (statistics as a checkpoint may keep them) hash like the lists stats.json holds."""
    payload = json.dumps(stats, sort_keys=True, separators=(",", ":"), default=_as_json)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _as_json(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"statistics hold a {type(value).__name__}, not numbers")


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the statistics of several datasets; an embodiment may appear in only one of them.

    Refuses to merge the same embodiment from two datasets: exact quantiles cannot be merged, and
    silently picking one would change normalisation. Recompute stats over the union instead.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            if name in merged and merged[name] != value:
                raise ValueError(
                    f"embodiment '{name}' appears in several datasets with different statistics; "
                    "compute joint statistics with `actionprior data stats --recompute` over the union"
                )
            merged[name] = value
    return merged


def _number_list(value: Any) -> bool:
    """A list of numbers as JSON gives it, or the same as a 1-D numeric array (statistics kept in a checkpoint)."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iuf"
    return isinstance(value, list) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in value
    )


def stats_problems(stats: Any) -> list[str]:
    """Why statistics cannot normalise anything, one message per embodiment and kind (empty when sound).

    Every value must be finite and within ``MAX_ABS_VALUE`` (the same sanity cap as raw values), every
    key a list of one number per dim, ``std >= 0``, ``q01 <= q99`` and ``min <= max``: NaN quantiles or
    ``q99 < q01`` would turn every normalised value into NaN or flip its sign without any error.
    """
    if not isinstance(stats, Mapping):
        return [f"statistics must be an object per embodiment, got {type(stats).__name__}"]
    out: list[str] = []
    for name, entry in stats.items():
        if not isinstance(entry, Mapping):
            out.append(f"'{str(name)[:60]}': statistics must be an object")
            continue
        for kind in ("state", "action"):
            part = entry.get(kind)
            where = f"'{str(name)[:60]}' {kind}"
            if not isinstance(part, Mapping) or not all(_number_list(part.get(k)) for k in STAT_KEYS):
                out.append(f"{where}: needs lists of numbers for {list(STAT_KEYS)}")
                continue
            lengths = {len(part[k]) for k in STAT_KEYS}
            if len(lengths) != 1 or 0 in lengths:
                out.append(
                    f"{where}: {list(STAT_KEYS)} must have one value per dim, got lengths {sorted(lengths)}"
                )
                continue
            arr = {k: np.asarray(part[k], dtype=np.float64) for k in STAT_KEYS}
            for k, v in arr.items():
                bad = np.flatnonzero(~np.isfinite(v) | (np.abs(v) > MAX_ABS_VALUE))
                if bad.size:
                    out.append(
                        f"{where} {k}[{bad[0]}] = {v[bad[0]]!r}: not finite or beyond +-{MAX_ABS_VALUE:g}"
                    )
                    break
            else:
                for low, high in (("q01", "q99"), ("min", "max")):
                    flipped = np.flatnonzero(arr[high] < arr[low])
                    if flipped.size:
                        d = flipped[0]
                        out.append(f"{where}: {high}[{d}] = {arr[high][d]!r} < {low}[{d}] = {arr[low][d]!r}")
                negative = np.flatnonzero(arr["std"] < 0)
                if negative.size:
                    out.append(f"{where}: std[{negative[0]}] is negative")
    return out


def stats_spec_problems(stats: Mapping[str, Any], dims: Mapping[str, tuple[int, int]]) -> list[str]:
    """Statistics (passing :func:`stats_problems`) that do not fit the embodiments ``name -> (state_dim,
    action_dim)`` they must normalise: an embodiment without an entry, or lists of another length."""
    out = []
    for name, (state_dim, action_dim) in dims.items():
        entry = stats.get(name)
        if not isinstance(entry, Mapping):
            out.append(f"no statistics for embodiment '{name}'")
            continue
        for kind, dim in (("state", state_dim), ("action", action_dim)):
            part = entry.get(kind)
            got = len(part["mean"]) if isinstance(part, Mapping) and _number_list(part.get("mean")) else 0
            if got != dim:
                out.append(f"'{name}' {kind} statistics have {got} dims, spec has {dim}")
    return out
