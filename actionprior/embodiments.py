"""Embodiment specifications: what a robot's state and action vectors mean.

A new robot is a YAML file under ``configs/embodiments/``, not code. Every other part of the project
(shards, normalisation, models, policy server) asks an :class:`EmbodimentRegistry` for dimensions and ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from actionprior.resources import embodiment_dir

# The checkout's configs/embodiments, or the copy shipped in the wheel (actionprior/resources.py).
DEFAULT_EMBODIMENT_DIR = embodiment_dir()


class EmbodimentError(ValueError):
    """An embodiment spec is malformed, unknown, or disagrees with data or a checkpoint."""


@dataclass(frozen=True)
class EmbodimentSpec:
    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    control_mode: str
    control_rate_hz: float
    cameras: tuple[str, ...] = ()
    gripper_action_dims: tuple[int, ...] = ()
    gripper_state_dims: tuple[int, ...] = ()
    description: str = ""
    # Simulator-specific construction details (robot, controller, ...). Ignored by models.
    sim: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def __post_init__(self) -> None:
        where = f"embodiment '{self.name}'"
        if not self.name:
            raise EmbodimentError("embodiment spec needs a non-empty 'name'")
        if self.state_dim == 0 or self.action_dim == 0:
            raise EmbodimentError(f"{where}: state_names and action_names must both be non-empty")
        for label, dims, size in (
            ("gripper_action_dims", self.gripper_action_dims, self.action_dim),
            ("gripper_state_dims", self.gripper_state_dims, self.state_dim),
        ):
            bad = [d for d in dims if not 0 <= d < size]
            if bad:
                raise EmbodimentError(f"{where}: {label} {bad} out of range for a {size}-D vector")
        if self.control_rate_hz <= 0:
            raise EmbodimentError(f"{where}: control_rate_hz must be positive, got {self.control_rate_hz}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> EmbodimentSpec:
        required = {"name", "state_names", "action_names", "control_mode", "control_rate_hz"}
        missing = sorted(required - set(data))
        if missing:
            raise EmbodimentError(f"{source}: embodiment spec is missing keys {missing}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EmbodimentError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}")
        kwargs = dict(data)
        for key in ("state_names", "action_names", "cameras", "gripper_action_dims", "gripper_state_dims"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs["control_rate_hz"] = float(kwargs["control_rate_hz"])
        kwargs["sim"] = dict(kwargs.get("sim") or {})
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> EmbodimentSpec:
        path = Path(path)
        with path.open() as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict):
            raise EmbodimentError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        d["sim"] = dict(self.sim)
        return d

    def io_signature(self) -> dict[str, Any]:
        """The parts of a spec that a trained model depends on (not descriptions or sim details)."""
        return {
            "name": self.name,
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "gripper_action_dims": list(self.gripper_action_dims),
            "gripper_state_dims": list(self.gripper_state_dims),
        }


class EmbodimentRegistry:
    """An ordered set of embodiments. The order fixes the integer ``embodiment_id`` used by models."""

    def __init__(self, specs: Iterable[EmbodimentSpec]):
        self._specs: list[EmbodimentSpec] = sorted(specs, key=lambda s: s.name)
        names = [s.name for s in self._specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise EmbodimentError(f"duplicate embodiment names: {dupes}")
        self._ids = {s.name: i for i, s in enumerate(self._specs)}

    @classmethod
    def from_dir(cls, directory: str | Path = DEFAULT_EMBODIMENT_DIR, names: Iterable[str] | None = None):
        directory = Path(directory)
        files = sorted(directory.glob("*.yaml"))
        if not files:
            raise EmbodimentError(f"no embodiment YAML files in {directory}")
        specs = {s.name: s for s in (EmbodimentSpec.from_yaml(p) for p in files)}
        if names is not None:
            names = list(names)
            unknown = sorted(set(names) - set(specs))
            if unknown:
                raise EmbodimentError(
                    f"unknown embodiments {unknown}; available in {directory}: {sorted(specs)}"
                )
            specs = {n: specs[n] for n in names}
        return cls(specs.values())

    @classmethod
    def from_dicts(cls, dicts: Iterable[Mapping[str, Any]]) -> EmbodimentRegistry:
        return cls(EmbodimentSpec.from_dict(d) for d in dicts)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self._specs]

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self):
        return iter(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._specs]

    def id_of(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise EmbodimentError(f"unknown embodiment '{name}'; known: {self.names}") from None

    def __getitem__(self, key: str | int) -> EmbodimentSpec:
        if isinstance(key, int):
            return self._specs[key]
        return self._specs[self.id_of(key)]

    @property
    def max_state_dim(self) -> int:
        return max(s.state_dim for s in self._specs)

    @property
    def max_action_dim(self) -> int:
        return max(s.action_dim for s in self._specs)

    @property
    def state_dims(self) -> list[int]:
        return [s.state_dim for s in self._specs]

    @property
    def action_dims(self) -> list[int]:
        return [s.action_dim for s in self._specs]

    def dim_masks(self, kind: str) -> np.ndarray:
        """``[E, max_dim]`` bool: True on each embodiment's own ``state``/``action`` columns of the padded layout."""
        dims = {"state": self.state_dims, "action": self.action_dims}[kind]
        return np.arange(max(dims))[None, :] < np.array(dims)[:, None]

    def fingerprint(self) -> str:
        payload = json.dumps([s.io_signature() for s in self._specs], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def diff(self, other: EmbodimentRegistry) -> list[str]:
        """Human-readable differences in what a model depends on; empty when compatible."""
        problems = []
        mine, theirs = set(self.names), set(other.names)
        if mine - theirs:
            problems.append(f"embodiments only in the first: {sorted(mine - theirs)}")
        if theirs - mine:
            problems.append(f"embodiments only in the second: {sorted(theirs - mine)}")
        for name in sorted(mine & theirs):
            a, b = self[name].io_signature(), other[name].io_signature()
            for key in a:
                if a[key] != b[key]:
                    problems.append(f"embodiment '{name}': {key} differs ({a[key]} vs {b[key]})")
        return problems
