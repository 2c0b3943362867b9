"""`piml status`: every node's health, and once k3s is up, the cluster and the platform's components."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json

HOT_C = 80.0  # the Pi 5 starts soft throttling at 80 °C
MIN_INTERVAL_S = 1.0  # --watch: every refresh reaches every node again


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def node_status(report) -> dict:
    """One node's status for --json; `healthy` decides the exit code."""
    node, facts = report.node, report.facts
    base = {"name": node.name, "address": node.address, "role": str(node.role), "reachable": report.reachable}
    if not report.reachable:
        return {**base, "healthy": False, "error": str(report.failure) if report.failure else "no facts"}
    throttled = facts.throttled
    used = (
        facts.memory_total_mb - facts.memory_available_mb
        if facts.memory_total_mb and facts.memory_available_mb is not None
        else None
    )
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
        outside = "ray" in r  # a ray_external host: its Ray worker instead of k3s
        if not r["reachable"]:
            style = "yellow" if outside else "red"
            table.add_row(r["name"], f"[bold {style}]unreachable[/]", *["-"] * 7, Text(r.get("ray", "-")))
            notes.append(Text(r["error"], style=style))
            continue
        mem = (
            f"{r['memory_used_mb'] / 1024:.1f}/{r['memory_mb'] / 1024:.1f}" if r["memory_used_mb"] is not None else "-"
        )
        disk = f"{r['disk_free_bytes'] / 1e9:.0f}/{r['disk_bytes'] / 1e9:.0f}" if r["disk_bytes"] else "-"
        temp = f"{r['temperature_c']:.0f}" if r["temperature_c"] is not None else "-"
        t = r["throttled"]
        throttled = "-" if not t else "now" if t["now"] else "since boot" if t["since_boot"] else "no"
        state = "[green]ok[/]" if r["healthy"] else "[yellow]attention[/]"
        notes += [Text(f"{r['name']}: {p}", style="yellow") for p in r["problems"]]
        table.add_row(
            r["name"],
            state,
            r["model"] or "-",
            r["arch"] or "-",
            str(r["cpus"] or "-"),
            mem,
            disk,
            temp,
            throttled,
            Text(f"ray {r['ray']}") if outside else r["k3s"],
        )
    return Group(table, *notes)


def _cluster_view(data: dict):
    """The Kubernetes part: nodes as the cluster sees them, the platform's components, the URLs."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not data.get("reachable"):
        return Text(f"cluster: {data.get('error', 'unreachable')}", style="red")
    nodes = Table(
        title=f"cluster {data.get('server', '')} ({data.get('version') or 'unknown version'})", title_justify="left"
    )
    for column in ("node", "ready", "pressure", "roles", "kubelet", "arch"):
        nodes.add_column(column)
    for n in data["nodes"]:
        nodes.add_row(
            n["name"],
            ("[green]yes[/]" if n["ready"] else "[red]no[/]")
            + (" [yellow](cordoned)[/]" if n.get("unschedulable") else ""),
            ", ".join(n["pressure"]) or "-",
            ", ".join(n["roles"]) or "-",
            n.get("kubelet") or "-",
            n.get("arch") or "-",
        )
    parts = [nodes]
    if data["components"]:
        components = Table(title="platform", title_justify="left")
        for column in ("component", "kind", "ready", "state"):
            components.add_column(column)
        for c in data["components"]:
            detail = c.get("state") or ""
            if "replicas" in c:
                detail = f"{c['ready_replicas']}/{c['replicas']} ready" + (
                    f" ({detail})" if detail and not c["ready"] else ""
                )
            elif c["kind"] == "HelmChart":
                detail = f"{c['chart']}: {detail}"
            components.add_row(c["component"], c["kind"], "[green]yes[/]" if c["ready"] else "[yellow]no[/]", detail)
        parts.append(components)
    parts += [Text(f"{name}: {url}") for name, url in data.get("urls", {}).items()]
    return Group(*parts)


def run_status(
    project: Path | None,
    inventory: Path | None,
    limit: str | None,
    accept_new: bool,
    as_json: bool,
    watch: bool,
    interval: float,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from piml.inventory import Role
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import reach, select_nodes

    if not math.isfinite(interval) or interval < MIN_INTERVAL_S:
        raise InputError(
            Problem(
                "--interval",
                f"{interval:g} is not a number of seconds, {MIN_INTERVAL_S:g} or more",
                "give the seconds between refreshes, e.g. --interval 5",
            )
        )
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = select_nodes(cluster.inventory.nodes, limit)
    kubeconfig = cluster.paths.kubeconfig  # written by `piml up`'s kubeconfig stage

    outside = [n for n in nodes if n.role is Role.EXTERNAL] if cluster.config.ray.enabled else []

    def snapshot() -> tuple[list[dict], dict | None]:
        """Nodes over SSH and the cluster over its API (and its Ray head about the ray_external hosts), at once."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            kube = workers = None
            if kubeconfig.exists():
                from piml.kube.status import cluster_status

                kube = pool.submit(cluster_status, cluster, kubeconfig)
                if outside:
                    from piml.rayext.head import external_workers

                    workers = pool.submit(external_workers, cluster)
            rows = [node_status(r) for r in reach(cluster, nodes, accept_new, connect_timeout=5.0)]
            said = workers.result() if workers else {}
            for row in rows:
                if row["role"] == str(Role.EXTERNAL):
                    row["ray"] = said.get(row["name"]) or said.get("") or "the cluster's Ray head not asked"
            return rows, kube.result() if kube else None

    def view(rows, kube):
        from rich.console import Group

        return Group(_view(rows), _cluster_view(kube)) if kube is not None else _view(rows)

    rows, kube = snapshot()
    if watch and (as_json or not console().is_terminal):
        # Not a terminal (a log, a pipe) or --json: each refresh is appended, stamped (JSON: one object a line),
        # rather than redrawn in place, which would show nothing until the end.
        try:
            while True:  # until Ctrl-C: that is what --watch is for
                if as_json:
                    sys.stdout.write(json.dumps({"at": _now(), "nodes": rows, "cluster": kube}, default=str) + "\n")
                else:
                    console().print(f"--- {_now()}", markup=False)
                    console().print(view(rows, kube))
                sys.stdout.flush()
                time.sleep(interval)
                rows, kube = snapshot()
        except KeyboardInterrupt:
            pass
    elif watch:
        from rich.live import Live

        try:
            with Live(view(rows, kube), console=console(), auto_refresh=False) as live:
                while True:  # until Ctrl-C: that is what --watch is for
                    time.sleep(interval)
                    rows, kube = snapshot()
                    live.update(view(rows, kube), refresh=True)
        except KeyboardInterrupt:
            pass
    elif as_json:
        print_json({"nodes": rows, "cluster": kube})
    else:
        console().print(view(rows, kube))
    # a ray_external host asleep is not the cluster unhealthy: nothing in it depends on the host
    unhealthy = [r["name"] for r in rows if not r["healthy"] and r["role"] != str(Role.EXTERNAL)]
    if kube is not None and not kube.get("healthy"):
        unhealthy.append("the cluster")
    if unhealthy:
        raise PimlError(Problem("piml status", f"not healthy: {', '.join(unhealthy)}", "see above"), EXIT_FAILED)
