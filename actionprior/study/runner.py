"""Runs the study's units as subprocesses (``python -m actionprior.cli ...``), resumably.

``<root>/ledger.json`` records every finished unit (``done`` or ``skipped`` with a note) with its wall-clock;
a rerun skips them, so an interrupted study continues where it stopped (and a Stage 2 fit that was cut off
resumes from its own ``last.ckpt``). A unit is done only when its command exits 0 *and* its outputs exist.
A failed unit is recorded as ``failed`` (retried next time); the units that need it are left for later and
the rest go on, so one failure does not waste the other hours of a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from actionprior.study.plan import Unit

LEDGER = "ledger.json"
Executor = Callable[[list[str], Path], int]  # (command, log file) -> exit code


class Ledger:
    """``{unit key: {"status", "seconds", "note", "finished"}}`` in a JSON file, rewritten atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: unreadable study ledger ({exc}); delete it to start over") from exc
            if not isinstance(data, dict) or not isinstance(data.get("units"), dict):
                raise ValueError(f"{path}: 'units' must be an object of unit records")
            self.entries = data["units"]

    def finished(self, key: str) -> bool:
        return self.entries.get(key, {}).get("status") in ("done", "skipped")

    def record(self, key: str, status: str, seconds: float, note: str = "") -> None:
        self.entries[key] = {
            "status": status,
            "seconds": round(seconds, 2),
            "note": note,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"units": self.entries}, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def subprocess_executor(cmd: list[str], log: Path) -> int:
    """Runs ``cmd`` with stdout and stderr into ``log`` (appended: a resumed unit keeps its history)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


@dataclass
class RunSummary:
    done: list[str]
    skipped: list[str]
    failed: list[str]
    blocked: list[str]
    resumed: list[str]


def run_units(
    units: Sequence[Unit],
    root: Path,
    executor: Executor = subprocess_executor,
    console: Console | None = None,
    only_kinds: Sequence[str] | None = None,
) -> RunSummary:
    console = console or Console()
    ledger = Ledger(root / LEDGER)
    summary = RunSummary([], [], [], [], [])
    for unit in units:
        if only_kinds and unit.kind not in only_kinds:
            continue
        if ledger.finished(unit.key):
            summary.resumed.append(unit.key)
            continue
        missing = [
            n for n in unit.needs if not ledger.finished(n) or ledger.entries[n]["status"] == "skipped"
        ]
        if missing:
            summary.blocked.append(unit.key)
            console.print(f"[yellow]waiting[/] {unit.key}: needs {missing}")
            continue
        log = root / "logs" / f"{unit.key.replace('/', '__')}.log"
        cmd = unit.command()
        console.print(f"[cyan]run[/] {unit.key}  [dim](log: {log})[/]")
        start = time.perf_counter()
        code = executor(cmd, log)
        seconds = time.perf_counter() - start
        absent = [str(p) for p in unit.outputs if not Path(p).exists()]
        if code == 0 and not absent:
            ledger.record(unit.key, "done", seconds)
            summary.done.append(unit.key)
            console.print(f"[green]done[/] {unit.key} in {seconds:.0f} s")
            continue
        note = _skip_note(unit, log) if code != 0 else None
        if note:
            ledger.record(unit.key, "skipped", seconds, note)
            summary.skipped.append(unit.key)
            console.print(f"[yellow]skipped[/] {unit.key}: {note}")
            continue
        why = f"exit code {code}" if code else f"outputs missing: {absent}"
        ledger.record(unit.key, "failed", seconds, why)
        summary.failed.append(unit.key)
        console.print(f"[red]failed[/] {unit.key}: {why}; see {log}")
    return summary


def _skip_note(unit: Unit, log: Path) -> str | None:
    if unit.skip_if is None or not log.exists():
        return None
    needles, note = unit.skip_if
    tail = log.read_text(errors="replace")[-20_000:]
    if all(n in tail for n in needles):
        reason = next((line.strip() for line in reversed(tail.splitlines()) if needles[0] in line), "")
        return f"{note} ({reason[:300]})" if reason else note
    return None
