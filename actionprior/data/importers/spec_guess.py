"""An embodiment spec guessed from a source dataset's metadata, or a given spec checked against it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from actionprior.data.importers.common import ImportFailure
from actionprior.embodiments import EmbodimentError, EmbodimentSpec

GRIPPER_WORDS = re.compile(r"grip|finger|claw|jaw", re.IGNORECASE)


def feature_names(key: str, names: Any, dim: int) -> list[str]:
    """Per-dimension names of a feature: LeRobot stores a list, sometimes ``{"motors": [...]}``, or null."""
    if isinstance(names, Mapping) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == dim:
        out = [str(n) for n in names]
        if len(set(out)) == dim:
            return out
    stem = re.sub(r"[^A-Za-z0-9_]", "_", key)
    return [f"{stem}_{i}" for i in range(dim)]


def concat_names(parts: Sequence[tuple[str, list[str]]]) -> list[str]:
    """Names of several features concatenated; a name used twice is prefixed with its feature key."""
    flat = [n for _, names in parts for n in names]
    if len(parts) == 1 or len(set(flat)) == len(flat):
        return flat
    return [f"{re.sub(r'[^A-Za-z0-9_]', '_', key)}.{n}" for key, names in parts for n in names]


def parse_dims(text: str | None, size: int, flag: str) -> tuple[int, ...] | None:
    """``"6"`` / ``"6,7"`` / ``"none"`` -> dims; None when the flag is not given (then names are used)."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ImportFailure(f"{flag}: expected comma-separated integers or 'none', got '{text}'") from None
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise ImportFailure(f"{flag}: dims {bad} out of range for a {size}-D vector")
    return dims


def guess_gripper_dims(names: Sequence[str]) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(names) if GRIPPER_WORDS.search(n))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def build_spec(
    *,
    name: str,
    state_names: Sequence[str],
    action_names: Sequence[str],
    control_rate_hz: float,
    cameras: Sequence[str],
    description: str,
    sim: dict[str, Any],
    control_mode: str = "unspecified",
    gripper_state: str | None = None,
    gripper_action: str | None = None,
) -> EmbodimentSpec:
    gs = parse_dims(gripper_state, len(state_names), "--gripper-state-dims")
    ga = parse_dims(gripper_action, len(action_names), "--gripper-action-dims")
    try:
        return EmbodimentSpec(
            name=name,
            state_names=tuple(state_names),
            action_names=tuple(action_names),
            control_mode=control_mode,
            control_rate_hz=float(control_rate_hz),
            cameras=tuple(cameras),
            gripper_action_dims=ga if ga is not None else guess_gripper_dims(action_names),
            gripper_state_dims=gs if gs is not None else guess_gripper_dims(state_names),
            description=description,
            sim=sim,
        )
    except EmbodimentError as exc:
        raise ImportFailure(str(exc)) from None


def given_spec(
    path: str | Path, state_dim: int, action_dim: int, cameras: Sequence[str], sim: dict[str, Any]
) -> EmbodimentSpec:
    """``--spec FILE``: its dims and cameras must match what is imported; the import record joins its ``sim``."""
    try:
        spec = EmbodimentSpec.from_yaml(path)
    except (OSError, EmbodimentError) as exc:
        raise ImportFailure(f"{path}: {exc}") from None
    if spec.state_dim != state_dim or spec.action_dim != action_dim:
        raise ImportFailure(
            f"{path}: spec '{spec.name}' has state/action dims {spec.state_dim}/{spec.action_dim}, "
            f"the source has {state_dim}/{action_dim}"
        )
    if spec.cameras and sorted(spec.cameras) != sorted(cameras):
        raise ImportFailure(
            f"{path}: spec cameras {list(spec.cameras)} differ from the imported cameras {list(cameras)}; "
            "map them with --cameras short=feature_key,..."
        )
    return replace(spec, cameras=tuple(cameras), sim={**dict(spec.sim), **sim})


def import_spec(
    spec_path: str | Path | None,
    embodiment: str | None,
    *,
    state_names: Sequence[str],
    action_names: Sequence[str],
    cameras: Sequence[str],
    sim: dict[str, Any],
    **guess: Any,
) -> EmbodimentSpec:
    """The embodiment spec of an import: the user's ``--spec`` (its dims and cameras checked against the source,
    its name against ``--embodiment``), or one guessed from the source's names (:func:`build_spec`, ``guess``
    holding its other arguments)."""
    if spec_path is None:
        return build_spec(
            state_names=state_names, action_names=action_names, cameras=cameras, sim=sim, **guess
        )
    spec = given_spec(spec_path, len(state_names), len(action_names), cameras, sim)
    if embodiment and embodiment != spec.name:
        raise ImportFailure(f"{spec_path}: spec is named '{spec.name}' but --embodiment says '{embodiment}'")
    return spec
