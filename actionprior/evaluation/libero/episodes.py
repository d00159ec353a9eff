"""Which LIBERO episodes to run, and the resumable record of those that finished (numpy-free, torch-free).

An episode is ``(task_id, episode)``; episode ``i`` starts from the task's init state ``i``. Every runner process
appends one JSON line per finished episode to a file of its own under ``<out>/episodes/`` (a new file per launch,
so a line cut short by a killed process is never glued to the next one); a resumed run reads them all and runs
only the episodes that are missing. A record written under other settings (suite, step limit, warm-up, render
size, seed, server execution) is refused: mixing them would change the result silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionprior.evaluation.libero.mapping import INIT_STATES_PER_TASK, TASKS_PER_SUITE

EPISODES_DIR = "episodes"
MAX_RECORD_BYTES = 64 * 1024  # a record is ~1 KB; a longer line is not ours
# The settings a record must share with the run that resumes it.
SETTING_KEYS = ("suite", "max_steps", "warmup_steps", "render_size", "seed")
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task_id": int,
    "episode": int,
    "task": str,
    "instruction": str,
    "success": bool,
    "steps": int,
    "wall_s": (int, float),
    "env_step_ms": (int, float),
    "act_ms": (int, float),
    "replans": int,
}


class EpisodeRecordError(ValueError):
    """A record file of finished episodes cannot be used to resume; the text names the file and line."""


@dataclass(frozen=True, order=True)
class EpisodeKey:
    task_id: int
    episode: int

    def token(self) -> str:
        return f"{self.task_id}:{self.episode}"


def parse_tasks(text: str | None, n_tasks: int = TASKS_PER_SUITE) -> list[int]:
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7]; None -> every task. Ids are LIBERO's task ids within the suite."""
    if text is None:
        return list(range(n_tasks))
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise EpisodeRecordError(f"--tasks: '{part}' is not a task id or a range like 2-5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= n_tasks:
            raise EpisodeRecordError(f"--tasks: '{part}' is outside the suite's task ids 0-{n_tasks - 1}")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def plan(tasks: Sequence[int], episodes: int) -> list[EpisodeKey]:
    """Every task's first ``episodes`` init states, in order."""
    if not 1 <= episodes <= INIT_STATES_PER_TASK:
        raise EpisodeRecordError(
            f"--episodes must be 1..{INIT_STATES_PER_TASK} (LIBERO has {INIT_STATES_PER_TASK} fixed init states "
            f"per task), got {episodes}"
        )
    return [EpisodeKey(t, e) for t in tasks for e in range(episodes)]


def parse_jobs(text: str) -> list[EpisodeKey]:
    """The runner's ``--jobs "0:0,0:1"`` (task_id:episode, comma-joined)."""
    keys = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+):(\d+)", part.strip())
        if not m:
            raise EpisodeRecordError(f"--jobs: '{part}' is not task_id:episode")
        keys.append(EpisodeKey(int(m.group(1)), int(m.group(2))))
    return keys


def format_jobs(keys: Iterable[EpisodeKey]) -> str:
    return ",".join(k.token() for k in keys)


def split(keys: Sequence[EpisodeKey], workers: int) -> list[list[EpisodeKey]]:
    """Contiguous blocks, one per worker (each worker builds a task's environment once for its episodes of it);
    no empty block."""
    workers = max(1, min(workers, len(keys)))
    size, extra = divmod(len(keys), workers)
    blocks, start = [], 0
    for w in range(workers):
        end = start + size + (w < extra)
        blocks.append(list(keys[start:end]))
        start = end
    return [b for b in blocks if b]


def check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise EpisodeRecordError(f"{where}: a record must be a JSON object")
    for key, kind in RECORD_FIELDS.items():
        value = record.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise EpisodeRecordError(
                f"{where}: field '{key}' missing or not {getattr(kind, '__name__', kind)}"
            )
    return record


def read_finished(out_dir: Path, settings: Mapping[str, Any]) -> dict[EpisodeKey, dict[str, Any]]:
    """The finished episodes recorded under ``out_dir/episodes``: one record per key (a key recorded twice, by
    two launches that both ran it, keeps its first record). A file's last line without a newline (a process killed
    while writing) is ignored; any other unreadable line, or a record of other settings, is an error."""
    finished: dict[EpisodeKey, dict[str, Any]] = {}
    directory = out_dir / EPISODES_DIR
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is empty or cut short
        for number, line in enumerate(complete, 1):
            where = f"{path}:{number}"
            if not line.strip():
                continue
            if len(line) > MAX_RECORD_BYTES:
                raise EpisodeRecordError(f"{where}: line of {len(line)} bytes is not an episode record")
            try:
                record = check_record(json.loads(line), where)
            except json.JSONDecodeError as exc:
                raise EpisodeRecordError(
                    f"{where}: not JSON ({exc.msg}); delete the line to re-run it"
                ) from None
            differ = {k: (record.get(k), settings[k]) for k in SETTING_KEYS if record.get(k) != settings[k]}
            if differ:
                said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
                raise EpisodeRecordError(
                    f"{where}: recorded under other settings ({said}); use another --out or the same settings"
                )
            finished.setdefault(EpisodeKey(record["task_id"], record["episode"]), record)
    return finished


def pending(planned: Sequence[EpisodeKey], finished: Mapping[EpisodeKey, Any]) -> list[EpisodeKey]:
    return [k for k in planned if k not in finished]


def next_launch(out_dir: Path) -> int:
    """The number of this launch: one more than any earlier launch's record files."""
    directory = out_dir / EPISODES_DIR
    found = (
        [re.match(r"launch(\d+)-", p.name) for p in directory.glob("launch*-w*.jsonl")]
        if directory.is_dir()
        else []
    )
    return max((int(m.group(1)) for m in found if m), default=-1) + 1


def record_file(out_dir: Path, launch: int, worker: int) -> Path:
    """Where worker ``worker`` of launch ``launch`` appends its records."""
    return out_dir / EPISODES_DIR / f"launch{launch:03d}-w{worker:02d}.jsonl"
