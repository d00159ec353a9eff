"""``actionprior data stats DIR [--recompute]``: a per-embodiment summary of a dataset.

Counts and tasks come from ``manifest.json`` (no shard is read); ``--recompute`` rereads the trajectory
shards and rewrites ``stats.json`` (e.g. after adding shards or editing data).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from actionprior.data.reader import load_manifest, load_stats
from actionprior.data.schema import DataError
from actionprior.data.writer import write_stats


def embodiment_summary(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per embodiment: episodes, transitions, dims, tasks (with episode counts), cameras."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in sorted(manifest.get("embodiments", {}).items()):
        out[name] = {
            "episodes": 0,
            "transitions": 0,
            "state_dim": len(spec["state_names"]),
            "action_dim": len(spec["action_names"]),
            "control_mode": spec.get("control_mode", ""),
            "cameras": list(spec.get("cameras", [])),
            "tasks": {},
        }
    for shard in manifest.get("shards", []):
        for ep in shard["episodes"]:
            row = out.get(ep["embodiment"])
            if row is None:
                raise DataError(
                    f"episode {ep['key']}: embodiment '{ep['embodiment']}' has no spec in the manifest"
                )
            row["episodes"] += 1
            row["transitions"] += int(ep["length"])
            row["tasks"][ep["task"]] = row["tasks"].get(ep["task"], 0) + 1
    return out


def summary_table(directory: str | Path, manifest: dict[str, Any]) -> Table:
    table = Table(title=f"{manifest.get('name', Path(directory).name)} ({directory})")
    for column, justify in (
        ("embodiment", "left"),
        ("episodes", "right"),
        ("transitions", "right"),
        ("state dim", "right"),
        ("action dim", "right"),
        ("control", "left"),
        ("cameras", "left"),
        ("tasks (episodes)", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    summary = embodiment_summary(manifest)
    for name, row in summary.items():
        tasks = ", ".join(f"{task} ({n})" for task, n in sorted(row["tasks"].items()))
        table.add_row(
            name,
            str(row["episodes"]),
            f"{row['transitions']:,}",
            str(row["state_dim"]),
            str(row["action_dim"]),
            row["control_mode"],
            ", ".join(row["cameras"]),
            tasks,
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(r["episodes"] for r in summary.values())),
        f"{sum(r['transitions'] for r in summary.values()):,}",
        "",
        "",
        "",
        "",
        f"{len(manifest.get('shards', []))} shard pairs",
    )
    return table


def cli_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actionprior data stats", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    parser.add_argument("--recompute", action="store_true", help="reread the shards and rewrite stats.json")
    args = parser.parse_args(argv)
    console = Console()
    try:
        manifest = load_manifest(args.directory)
        if args.recompute:
            payload = write_stats(args.directory, manifest)
            console.print(f"wrote {args.directory / 'stats.json'} (fingerprint {payload['fingerprint']})")
        console.print(summary_table(args.directory, manifest))
        if not args.recompute:
            try:
                load_stats(args.directory)
            except DataError as exc:
                console.print(f"[yellow]warning:[/yellow] {exc}")
    except DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0
