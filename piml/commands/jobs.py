"""`piml jobs [ID]`: recent requests with their state, times, node, MLflow run and error."""

from __future__ import annotations

from pathlib import Path

from piml.output import console, print_json, terminal_safe

STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "queued": "yellow"}


def _time(value: str | None) -> str:
    return str(value).replace("T", " ")[:19] if value else "-"


def run_jobs(
    request_id: str | None, limit: int, queue_url: str | None, project: Path | None, inventory: Path | None, json: bool
) -> None:
    from piml.commands.submit import open_broker
    from piml.errors import InputError, Problem

    if limit < 1:
        raise InputError(
            Problem("--limit", f"{limit} is not a number of requests to list", "give 1 or more, e.g. -n 20")
        )
    with open_broker(project, inventory, queue_url) as broker:
        if request_id:
            job = broker.get(request_id)
            if job is None:
                raise InputError(
                    Problem(request_id, "no such request (or its record expired)", "list recent ones with `piml jobs`")
                )
            jobs = [job]
        else:
            jobs = broker.jobs(limit)
            waiting = broker.queue_length() if hasattr(broker, "queue_length") else None
    if json:
        print_json({"jobs": jobs})
        return
    if request_id:
        job = jobs[0]
        width = max(len(k) for k in job)
        for key, value in job.items():
            shown = value if value not in (None, "", {}) else "-"
            console().print(f"{key:<{width}}  {terminal_safe(str(shown))}", markup=False)
        return
    if not jobs:
        console().print("no requests yet; queue one with `piml submit MODEL INPUT`", markup=False)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATE", "SUBMITTED", "STARTED", "FINISHED", "NODE", "TRIES", "MLFLOW RUN", "ERROR"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        state = job["state"] or "?"
        cells = [
            job["id"],
            state,
            _time(job["submitted_at"]),
            _time(job["started_at"]),
            _time(job["finished_at"]),
            job["node"] or "-",
            str(job["attempts"] or 0),
            job["run_url"] or job["run_id"] or "-",
            (job["error"] or "")[:120],
        ]
        cells = [Text(terminal_safe(str(cell))) for cell in cells]  # broker records are written by pods: outside text
        cells[1].stylize(STYLE.get(state, "white"))
        table.add_row(*cells)
    console().print(table)
    if waiting is not None:
        console().print(f"{waiting} waiting in the queue", markup=False)
