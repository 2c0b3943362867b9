"""`piml inventory show|check`."""

from __future__ import annotations

from pathlib import Path

from piml.output import console, print_json, warning_line
from piml.project import ProjectPaths, load_cluster


def show(project: Path | None, inventory: Path | None, as_json: bool) -> None:
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = cluster.inventory.nodes
    if as_json:
        print_json({"nodes": [n.as_dict() for n in nodes]})
        return
    from rich.table import Table

    table = Table(title=f"{cluster.name}: {len(nodes)} nodes", title_justify="left")
    for column in ("name", "address", "role", "user", "model", "labels"):
        table.add_column(column)
    for n in nodes:
        labels = ", ".join(f"{k}={v}" for k, v in n.labels.items())
        table.add_row(n.name, n.address, str(n.role), n.user or "-", n.model or "-", labels or "-")
    console().print(table)
    for warning in cluster.inventory.warnings:
        warning_line(str(warning))


def check(project: Path | None, inventory: Path | None, as_json: bool) -> None:
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    inv = cluster.inventory
    if as_json:
        print_json(
            {
                "ok": True,
                "nodes": len(inv.nodes),
                "servers": len(inv.servers),
                "agents": len(inv.agents),
                "external": len(inv.external),
                "warnings": [str(w) for w in inv.warnings],
            }
        )
        return
    for warning in inv.warnings:
        warning_line(str(warning))
    console().print(
        f"{inv.source}: ok, {len(inv.nodes)} nodes ({len(inv.servers)} server, {len(inv.agents)} agent"
        f"{f', {len(inv.external)} external' if inv.external else ''}); piml.yaml: ok"
    )
