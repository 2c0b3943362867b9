"""`piml teardown --k3s`: take k3s off the nodes.

Agents are drained and deleted from the cluster, then k3s's uninstall scripts run (agents first, then
servers, the first server last) and the project's context leaves ~/.kube/config. A node that cannot be
reached is reported and skipped, not fatal. Removing the platform comes with the platform stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json, warning_line


def run_teardown(project: Path | None, inventory: Path | None, k3s: bool, yes: bool, limit: str | None,
                 as_json: bool) -> None:
    from piml.inventory import Role
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    if not k3s:
        raise InputError(Problem("piml teardown", "removing the platform comes with the platform stage; so far only `--k3s` (uninstall k3s) exists",
                                 "run `piml teardown --k3s` to uninstall k3s from the nodes"))
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = [n for n in select_nodes(cluster.inventory.nodes, limit) if n.role is not Role.EXTERNAL]
    whole = {n.name for n in cluster.inventory.servers} <= {n.name for n in nodes}
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(Problem("piml teardown", "asks for confirmation, but there is no terminal to ask on", "pass --yes"))
        import typer

        names = ", ".join(n.name for n in nodes)
        if not typer.confirm(f"Uninstall k3s from {names}? Workloads and cluster data on them are deleted", default=False):
            console().print("nothing was changed")
            raise SystemExit(1)

    from piml.k3s import kubeconfig as kc
    from piml.k3s.stages import run_playbook_stage

    result = run_playbook_stage(cluster, "teardown", nodes, {}, show=not as_json, playbook="teardown.yml")
    gone = [h for h, s in result.hosts.items() if s.get("unreachable")]
    broken = {h: m for h, m in result.failures.items() if h not in gone}
    notes = []
    if whole and not broken:
        stored = cluster.paths.state / "kubeconfig"
        if stored.exists():
            stored.unlink()
            notes.append(f"removed {cluster.paths.show(stored)}")
        removed = kc.remove_from(kc.default_target(), cluster.name)
        if removed.changed:
            notes.append(f"removed context '{cluster.name}' from {removed.path} (backup: {removed.backup})")
    if as_json:
        print_json({"teardown": result.as_dict(), "skipped": gone, "notes": notes, "ok": not broken})
    else:
        for note in notes:
            console().print(note, markup=False)
    for host in gone:
        warning_line(f"{host}: unreachable, skipped: k3s may still be installed there; "
                     f"when it is back, run `piml teardown --k3s --limit {host}`")
    if broken:
        raise PimlError([Problem(h, m) for h, m in broken.items()], EXIT_FAILED)
