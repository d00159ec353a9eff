"""Every evaluation episode of a study, as one table: ``<runs>/episodes.csv`` (published as
``docs/reproduce/episodes.csv``).

One line per episode: ``row`` (the Stage 2 row), ``point`` (``final``, or ``early`` for the data-scaling rows'
early checkpoint), ``training_seed``, ``embodiment``, ``task``, ``eval_seed`` (the simulator seed of the episode:
the same list for every row and training seed), ``success`` (0/1) and ``steps``. Every success figure of the
report is a function of this table alone (``success.py``):

    python -m actionprior.study.success docs/reproduce/episodes.csv     # the report's success figures, recomputed
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path

from actionprior.study.plan import ROWS, SCARCE, Preset, slug

FIELDS = ("row", "point", "training_seed", "embodiment", "task", "eval_seed", "success", "steps")
POINTS = ("final", "early")
MAX_CSV_BYTES = 64 * 1024 * 1024  # a study has thousands of episodes (~100 bytes each), not millions


@dataclass(frozen=True, order=True)
class Episode:
    row: str
    point: str
    training_seed: int
    embodiment: str
    task: str
    eval_seed: int
    success: int
    steps: int


def _report_episodes(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
        episodes = data["episodes"]
        if not isinstance(episodes, list):
            raise TypeError("'episodes' is not a list")
        return episodes
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an evaluation report with an 'episodes' list ({exc})") from exc


def gather(root: Path, preset: Preset) -> list[Episode]:
    """The episodes of every finished evaluation of the study in ``root`` (``eval/<row>/seed<s>/<point>-<part>``).

    A part's episodes are read from its own evaluation (``rich`` or ``scarce``) or from a joint one (``all``); the
    plan evaluates a checkpoint either jointly or in two parts, never both, but a folder resumed under other
    episode counts can hold both: then the joint one wins only where no part of its own exists.
    """
    out: list[Episode] = []
    for row in ROWS:
        for seed in preset.seeds:
            folder = root / "eval" / slug(row.name) / f"seed{seed}"
            for point in POINTS:
                for part in ("rich", "scarce"):
                    for name in (f"{point}-{part}", f"{point}-all"):
                        path = folder / name / "report.json"
                        if path.exists():
                            break
                    else:
                        continue
                    for e in _report_episodes(path):
                        if (e["embodiment"] == SCARCE) != (part == "scarce"):
                            continue
                        out.append(Episode(row.name, point, seed, str(e["embodiment"]), str(e["task"]),
                                           int(e["seed"]), int(bool(e["success"])), int(e.get("steps", 0))))  # fmt: skip
    return sorted(out)


def write_csv(path: Path, episodes: Iterable[Episode]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows(astuple(e) for e in sorted(episodes))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(buffer.getvalue())
    tmp.replace(path)
    return path


def read_csv(path: Path) -> list[Episode]:
    """The episodes of ``path``; any malformed line is refused with its line number."""
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_CSV_BYTES} an episode table may have")
    reader = csv.reader(io.StringIO(path.read_text()))
    header = next(reader, None)
    if header is None or tuple(header) != FIELDS:
        raise ValueError(f"{path}: the header must be {','.join(FIELDS)}, got {header}")
    out = []
    for line, values in enumerate(reader, start=2):
        if len(values) != len(FIELDS):
            raise ValueError(f"{path}:{line}: {len(values)} fields, expected {len(FIELDS)}")
        row, point, seed, embodiment, task, eval_seed, success, steps = values
        try:
            episode = Episode(
                row, point, int(seed), embodiment, task, int(eval_seed), int(success), int(steps)
            )
        except ValueError as exc:
            raise ValueError(
                f"{path}:{line}: training_seed, eval_seed, success and steps must be integers"
            ) from exc
        if point not in POINTS or episode.success not in (0, 1) or not row or not embodiment or not task:
            raise ValueError(f"{path}:{line}: point must be one of {POINTS}, success 0 or 1, names non-empty")
        out.append(episode)
    return out
