"""`piml up`: run the stages in order. Today: preflight (the k3s and platform issues add theirs)."""

from __future__ import annotations

from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.inventory.ansible import did_you_mean
from piml.output import console, print_json

STAGES = ("preflight",)


def select_stages(only: str | None, start: str | None, until: str | None) -> list[str]:
    for option, value in (("--only", only), ("--from", start), ("--until", until)):
        for word in (value or "").split(","):
            if word and word not in STAGES:
                raise InputError(Problem(option, f"no stage '{word}'", did_you_mean(word, STAGES)))
    if only:
        wanted = set(only.split(","))
        return [s for s in STAGES if s in wanted]
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise InputError(Problem("--from/--until", f"'{start}' comes after '{until}'", f"stages run in this order: {', '.join(STAGES)}"))
    return list(STAGES[first:last + 1])


def run_up(project: Path | None, inventory: Path | None, only, start, until, limit, accept_new: bool,
           dry_run: bool, as_json: bool) -> None:
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    stages = select_stages(only, start, until)
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = select_nodes(cluster.inventory.nodes, limit)
    if dry_run:
        plan = {"preflight": [f"{n.name}: connect to {n.user or 'ssh'}@{n.address}, gather facts (read-only)" for n in nodes]}
        if as_json:
            print_json({"dry_run": True, "stages": {s: plan[s] for s in stages}})
            return
        for stage in stages:
            console().print(f"[bold]{stage}[/]")
            for line in plan[stage]:
                console().print(f"  {line}", markup=False)
        return
    failed = False
    summary = {}
    for stage in stages:
        if stage == "preflight":
            ok, summary[stage] = _preflight(cluster, nodes, accept_new, as_json)
            failed |= not ok
        if failed:
            break
    if as_json:
        print_json({"stages": summary, "ok": not failed})
    if failed:
        raise PimlError(Problem("piml up", f"stage {stage} failed", "fix what the table says and run piml up again"), EXIT_FAILED)


def _preflight(cluster, nodes, accept_new: bool, as_json: bool) -> tuple[bool, list[dict]]:
    from piml.preflight import FAIL, preflight
    from piml.reach import reach

    with console().status(f"preflight: reaching {len(nodes)} nodes") if not as_json and console().is_terminal else _nothing():
        reports = reach(cluster, nodes, accept_new)
    checks = preflight(reports, cluster.config, ha=len(cluster.inventory.servers) > 1)
    if not as_json:
        render_checks(checks)
    return not any(c.status == FAIL for c in checks), [c.as_dict() for c in checks]


def render_checks(checks) -> None:
    from rich.table import Table

    style = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title="preflight", title_justify="left")
    for column in ("node", "check", "result", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.node, c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    console().print(table)
    counts = {s: sum(c.status == s for c in checks) for s in style}
    console().print(f"preflight: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
