"""`piml teardown`: remove the platform, or with `--k3s` take k3s off the nodes.

Without --k3s: the platform's objects are deleted; PersistentVolumeClaims (and their data) are kept
unless --purge, which asks for the project's name to be typed (or --yes).
With --k3s: agents are drained and deleted from the cluster, then k3s's uninstall scripts run (agents
first, then servers, the first server last) and the project's context leaves ~/.kube/config. A node that
cannot be reached is reported and skipped, not fatal.
"""

from __future__ import annotations

import sys
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json, warning_line


def run_teardown(project: Path | None, inventory: Path | None, k3s: bool, yes: bool, limit: str | None,
                 as_json: bool, purge: bool = False) -> None:
    from piml.inventory import Role
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    if not k3s:
        _teardown_platform(cluster, yes, purge, as_json)
        return
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


def _teardown_platform(cluster, yes: bool, purge: bool, as_json: bool) -> None:
    """Delete the platform; volumes stay unless purge, which wants the project's name typed."""
    kubeconfig = cluster.paths.state / "kubeconfig"
    if not kubeconfig.exists():
        raise InputError(Problem(cluster.paths.show(kubeconfig), "no kubeconfig: there is no cluster piml set up here",
                                 "run it in the project directory (-C DIR), or nothing needs tearing down"))
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(Problem("piml teardown", "asks for confirmation, but there is no terminal to ask on", "pass --yes"))
        import typer

        if purge:
            answer = typer.prompt(f"This deletes the platform AND its data (MLflow runs, models, queued requests). "
                                  f"Type the project name '{cluster.name}' to go on", default="", show_default=False)
            if answer.strip() != cluster.name:
                console().print("the name did not match: nothing was changed")
                raise SystemExit(1)
        elif not typer.confirm(f"Delete the platform of '{cluster.name}'? Its volumes (data) are kept", default=False):
            console().print("nothing was changed")
            raise SystemExit(1)
    from piml.kube.teardown import teardown_platform

    progress = None if as_json else (lambda line: console().print(f"  {line}", markup=False))
    report = teardown_platform(cluster, kubeconfig, purge=purge, progress=progress)
    if as_json:
        print_json({"teardown": report.as_dict(), "ok": True})
        return
    kept = f"; kept {len(report.kept)}: {', '.join(str(r) for r in report.kept)} (--purge deletes them)" if report.kept else ""
    console().print(f"platform removed: {len(report.deleted)} object(s) deleted{kept}", markup=False)
