"""`piml status`: every node's health in one table (the cluster and platform parts come later)."""

from __future__ import annotations

import time
from pathlib import Path

from piml.errors import EXIT_FAILED, PimlError, Problem
from piml.output import console, print_json

HOT_C = 80.0  # the Pi 5 starts soft throttling at 80 °C


def node_status(report) -> dict:
    """One node's status for --json; `healthy` decides the exit code."""
    node, facts = report.node, report.facts
    base = {"name": node.name, "address": node.address, "role": str(node.role), "reachable": report.reachable}
    if not report.reachable:
        return {**base, "healthy": False, "error": str(report.failure) if report.failure else "no facts"}
    throttled = facts.throttled
    used = facts.memory_total_mb - facts.memory_available_mb if facts.memory_total_mb and facts.memory_available_mb is not None else None
    problems = []
    if throttled and throttled.now:
        problems.append("throttled now: " + ", ".join(throttled.now))
    if facts.temperature_c is not None and facts.temperature_c >= HOT_C:
        problems.append(f"hot: {facts.temperature_c:.0f} °C")
    return {
        **base,
        "healthy": not problems,
        "problems": problems,
        "hostname": facts.hostname,
        "model": facts.model,
        "model_raw": facts.model_raw,
        "arch": facts.arch,
        "os": facts.os_pretty,
        "kernel": facts.kernel,
        "cpus": facts.cpu_count,
        "memory_mb": facts.memory_total_mb,
        "memory_used_mb": used,
        "disk_bytes": facts.root_size_bytes,
        "disk_free_bytes": facts.root_free_bytes,
        "temperature_c": facts.temperature_c,
        "throttled": throttled.as_dict() if throttled else None,
        "k3s": k3s_state(facts),
    }


def k3s_state(facts) -> str:
    if not facts.k3s_installed:
        return "not installed"
    for service in (facts.k3s_service, facts.k3s_agent_service):
        if service and service.loaded:
            return f"{service.unit.removesuffix('.service')} {service.active}"
    return f"installed {facts.k3s_version or ''}".strip()


def _view(rows: list[dict]):
    """The table, and below it one line per problem: long reasons do not fit in a column."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"nodes ({time.strftime('%H:%M:%S')})", title_justify="left")
    for column in ("node", "state", "model", "arch", "cpu", "mem GiB", "disk GB", "°C", "throttled", "k3s"):
        table.add_column(column, no_wrap=column in ("node", "state"))
    notes = []
    for r in rows:
        if not r["reachable"]:
            table.add_row(r["name"], "[bold red]unreachable[/]", *["-"] * 8)
            notes.append(Text(r["error"], style="red"))
            continue
        mem = f"{r['memory_used_mb'] / 1024:.1f}/{r['memory_mb'] / 1024:.1f}" if r["memory_used_mb"] is not None else "-"
        disk = f"{r['disk_free_bytes'] / 1e9:.0f}/{r['disk_bytes'] / 1e9:.0f}" if r["disk_bytes"] else "-"
        temp = f"{r['temperature_c']:.0f}" if r["temperature_c"] is not None else "-"
        t = r["throttled"]
        throttled = "-" if not t else "now" if t["now"] else "since boot" if t["since_boot"] else "no"
        state = "[green]ok[/]" if r["healthy"] else "[yellow]attention[/]"
        notes += [Text(f"{r['name']}: {p}", style="yellow") for p in r["problems"]]
        table.add_row(r["name"], state, r["model"] or "-", r["arch"] or "-", str(r["cpus"] or "-"), mem, disk, temp, throttled, r["k3s"])
    return Group(table, *notes)


def run_status(project: Path | None, inventory: Path | None, limit: str | None, accept_new: bool,
               as_json: bool, watch: bool, interval: float) -> None:
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import reach, select_nodes

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = select_nodes(cluster.inventory.nodes, limit)

    def snapshot() -> list[dict]:
        return [node_status(r) for r in reach(cluster, nodes, accept_new, connect_timeout=5.0)]

    rows = snapshot()
    if watch and not as_json:
        from rich.live import Live

        try:
            with Live(_view(rows), console=console(), auto_refresh=False) as live:
                while True:  # until Ctrl-C: that is what --watch is for
                    time.sleep(max(1.0, interval))
                    rows = snapshot()
                    live.update(_view(rows), refresh=True)
        except KeyboardInterrupt:
            pass
    elif as_json:
        print_json({"nodes": rows})
    else:
        console().print(_view(rows))
    unhealthy = [r["name"] for r in rows if not r["healthy"]]
    if unhealthy:
        raise PimlError(Problem("piml status", f"not healthy: {', '.join(unhealthy)}", "see the table above"), EXIT_FAILED)
