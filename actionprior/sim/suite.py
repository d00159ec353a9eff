"""Demonstration suites: which (embodiment, task) pairs to collect, with instructions and episode limits.

A suite is a YAML file under ``configs/suites/``; see ``sim-default.yaml`` for the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actionprior.embodiments import DEFAULT_EMBODIMENT_DIR, EmbodimentRegistry
from actionprior.resources import suite_dir

# The checkout's configs/suites, or the copy shipped in the wheel (actionprior/resources.py).
DEFAULT_SUITE_DIR = suite_dir()
DEFAULT_SUITE = "sim-default"
# Task names end up in episode keys and shard names, which allow only these characters.
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class SuiteError(ValueError):
    """A suite file is malformed or names an unknown embodiment/task."""


@dataclass(frozen=True)
class TaskEntry:
    embodiment: str
    task: str
    env: str
    max_steps: int
    settle_steps: int
    instructions: tuple[str, ...]

    def instruction_for(self, seed: int) -> str:
        """The paraphrase used for an episode: picked by its seed, so it is reproducible."""
        return self.instructions[seed % len(self.instructions)]


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[TaskEntry, ...]
    source: str = "<dict>"

    @property
    def embodiments(self) -> list[str]:
        return sorted({t.embodiment for t in self.tasks})

    def entry(self, embodiment: str, task: str) -> TaskEntry:
        for t in self.tasks:
            if t.embodiment == embodiment and t.task == task:
                return t
        available = [f"{t.embodiment}/{t.task}" for t in self.tasks]
        raise SuiteError(
            f"{self.source}: no task '{task}' for embodiment '{embodiment}'; available: {available}"
        )

    def select(self, only: list[str] | None) -> Suite:
        """A sub-suite of the entries named ``embodiment/task`` (or just ``embodiment`` for all its tasks)."""
        if not only:
            return self
        chosen = [t for t in self.tasks if f"{t.embodiment}/{t.task}" in only or t.embodiment in only]
        known = {f"{t.embodiment}/{t.task}" for t in self.tasks} | {t.embodiment for t in self.tasks}
        unknown = sorted(set(only) - known)
        if unknown:
            raise SuiteError(f"{self.source}: unknown entries {unknown}; available: {sorted(known)}")
        return Suite(self.name, tuple(chosen), self.source)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<dict>", registry: EmbodimentRegistry | None = None
    ) -> Suite:
        if not isinstance(data, Mapping) or "tasks" not in data:
            raise SuiteError(f"{source}: a suite needs a top-level 'tasks' list")
        defaults = dict(data.get("defaults") or {})
        registry = registry or EmbodimentRegistry.from_dir(DEFAULT_EMBODIMENT_DIR)
        entries: list[TaskEntry] = []
        seen: set[tuple[str, str]] = set()
        for i, raw in enumerate(data["tasks"]):
            where = f"{source}: tasks[{i}]"
            item = {**defaults, **raw}
            missing = [k for k in ("embodiment", "task", "env", "max_steps", "instructions") if k not in item]
            if missing:
                raise SuiteError(f"{where} is missing {missing}")
            unknown = sorted(
                set(item) - {"embodiment", "task", "env", "max_steps", "settle_steps", "instructions"}
            )
            if unknown:
                raise SuiteError(f"{where} has unknown keys {unknown}")
            if item["embodiment"] not in registry:
                raise SuiteError(
                    f"{where}: unknown embodiment '{item['embodiment']}'; known: {registry.names}"
                )
            if not _NAME.match(str(item["task"])):
                raise SuiteError(f"{where}: task name '{item['task']}' may only use [A-Za-z0-9_-]")
            instructions = tuple(str(s) for s in item["instructions"])
            if not instructions:
                raise SuiteError(f"{where}: needs at least one instruction")
            if int(item["max_steps"]) <= 0:
                raise SuiteError(f"{where}: max_steps must be positive")
            key = (item["embodiment"], item["task"])
            if key in seen:
                raise SuiteError(f"{where}: duplicate entry {key[0]}/{key[1]}")
            seen.add(key)
            entries.append(
                TaskEntry(
                    embodiment=str(item["embodiment"]),
                    task=str(item["task"]),
                    env=str(item["env"]),
                    max_steps=int(item["max_steps"]),
                    settle_steps=int(item.get("settle_steps", 5)),
                    instructions=instructions,
                )
            )
        if not entries:
            raise SuiteError(f"{source}: the suite has no tasks")
        return cls(name=str(data.get("name", Path(source).stem)), tasks=tuple(entries), source=source)


def load_suite(name_or_path: str | Path = DEFAULT_SUITE, registry: EmbodimentRegistry | None = None) -> Suite:
    """Load a suite by name (``configs/suites/<name>.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DEFAULT_SUITE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in DEFAULT_SUITE_DIR.glob("*.yaml"))
        raise SuiteError(
            f"suite '{name_or_path}' not found ({path}); available in {DEFAULT_SUITE_DIR}: {available}"
        )
    with path.open() as f:
        data = yaml.safe_load(f)
    return Suite.from_dict(data, source=str(path), registry=registry)
