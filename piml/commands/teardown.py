"""`piml teardown`: remove the platform, or with `--k3s` take k3s off the nodes.

Without --k3s: the platform's objects are deleted; PersistentVolumeClaims (and their data) are kept
unless --purge, which asks for the project's name to be typed (or --yes).
With --k3s: agents are drained and deleted from the cluster, then k3s's uninstall scripts run (agents
first, then servers, the first server last) and the project's context leaves ~/.kube/config. A node that
cannot be reached is skipped (the others go on) and reported: the exit code is 1, the JSON says ok false.
--purge does not go with --k3s (uninstalling k3s deletes the volumes on those nodes anyway); --limit goes
with --k3s only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json


def run_teardown(
    project: Path | None,
    inventory: Path | None,
    k3s: bool,
    yes: bool,
    limit: str | None,
    as_json: bool,
    purge: bool = False,
) -> None:
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    if purge and k3s:
        # Not both: --purge deletes the platform's volumes through the cluster, --k3s uninstalls k3s, which deletes
        # every volume on the nodes it leaves anyway. With --limit, a purge would reach past the chosen nodes.
        raise InputError(
            Problem(
                "--purge",
                "not with --k3s (uninstalling k3s deletes the volumes on those nodes anyway)",
                "drop --purge; or run `piml teardown --purge` first to delete the platform and its data and keep k3s",
            )
        )
    if limit is not None and not k3s:
        raise InputError(
            Problem(
                "--limit",
                "goes with --k3s only: the platform is removed from the whole cluster",
                "leave --limit out to remove the platform, or add --k3s to uninstall k3s from those nodes",
            )
        )
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    if not k3s:
        _teardown_platform(cluster, yes, purge, as_json)
        return
    nodes = select_nodes(cluster.inventory.nodes, limit, k3s_only=True)
    whole = {n.name for n in cluster.inventory.servers} <= {n.name for n in nodes}

    from piml.k3s import kubeconfig as kc

    target = kc.default_target()
    if whole:  # the context leaves it at the end: a file piml cannot edit is said now, before any node changes
        kc.check_target(target)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(
                Problem("piml teardown", "asks for confirmation, but there is no terminal to ask on", "pass --yes")
            )
        import typer

        names = ", ".join(n.name for n in nodes)
        if not typer.confirm(
            f"Uninstall k3s from {names}? Workloads and cluster data on them are deleted", default=False
        ):
            console().print("nothing was changed")
            raise SystemExit(1)

    from piml.k3s.stages import run_playbook_stage

    external = _remove_external(cluster, as_json) if limit is None else None  # the whole cluster: them too
    result = run_playbook_stage(cluster, "teardown", nodes, {}, show=not as_json, playbook="teardown.yml")
    gone = [h for h, s in result.hosts.items() if s.get("unreachable")]
    broken = {h: m for h, m in result.failures.items() if h not in gone}
    notes = []
    servers = {n.name for n in cluster.inventory.servers}
    # k3s is gone from the cluster only when every server's uninstall ran: then the kubeconfig goes too
    if whole and not servers & set(result.failures) and "cluster" not in result.failures:
        stored = cluster.paths.kubeconfig
        if stored.exists():
            stored.unlink()
            notes.append(f"removed {cluster.paths.show(stored)}")
        removed = kc.remove_from(target, cluster.name)
        if removed.changed:
            notes.append(f"removed context '{cluster.name}' from {removed.path} (backup: {removed.backup})")
    ok = not result.failures
    if as_json:
        print_json(
            {
                "teardown": result.as_dict(),
                "ray_external": external,
                "skipped": gone,
                "notes": notes,
                "ok": ok and _ok(external),
            }
        )
    else:
        for note in notes:
            console().print(note, markup=False)
    if ok:
        _raise_external(external)
        return
    problems = [
        Problem(
            h,
            "unreachable, skipped: k3s may still be installed there",
            f"when it is back, run `piml teardown --k3s --limit {h}`",
        )
        for h in gone
    ]
    problems += [Problem(h, m) for h, m in broken.items()]
    failed = [h for h in (*gone, *broken) if h != "cluster"]
    problems.append(
        Problem(
            "piml teardown",
            f"k3s was not removed from {len(failed)} node(s): {', '.join(failed)}"
            if failed
            else "the teardown playbook did not run",
            "see above",
        )
    )
    raise PimlError(problems, EXIT_FAILED)


def _teardown_platform(cluster, yes: bool, purge: bool, as_json: bool) -> None:
    """Delete the platform; volumes stay unless purge, which wants the project's name typed."""
    kubeconfig = cluster.paths.kubeconfig
    if not kubeconfig.exists():
        fix = "run it in the project directory (-C DIR), or nothing needs tearing down"
        where = cluster.paths.show(kubeconfig)
        raise InputError(Problem(where, "no kubeconfig: there is no cluster piml set up here", fix))
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(
                Problem("piml teardown", "asks for confirmation, but there is no terminal to ask on", "pass --yes")
            )
        import typer

        if purge:
            answer = typer.prompt(
                f"This deletes the platform AND its data (MLflow runs, models, queued requests). "
                f"Type the project name '{cluster.name}' to go on",
                default="",
                show_default=False,
            )
            if answer.strip() != cluster.name:
                console().print("the name did not match: nothing was changed")
                raise SystemExit(1)
        elif not typer.confirm(f"Delete the platform of '{cluster.name}'? Its volumes (data) are kept", default=False):
            console().print("nothing was changed")
            raise SystemExit(1)
    from piml.kube.teardown import teardown_platform

    progress = None if as_json else (lambda line: console().print(f"  {line}", markup=False))
    report = teardown_platform(cluster, kubeconfig, purge=purge, progress=progress)
    external = _remove_external(cluster, as_json)
    if as_json:
        print_json(
            {"teardown": report.as_dict(), "ray_external": external, "ok": not report.waiting_for and _ok(external)}
        )
    else:
        kept = (
            f"; kept {len(report.kept)}: {', '.join(str(r) for r in report.kept)} (--purge deletes them)"
            if report.kept
            else ""
        )
        console().print(f"platform removed: {len(report.deleted)} object(s) deleted{kept}", markup=False)
    _raise_external(external)
    if report.waiting_for:  # finalizers that did not finish within the bound: say what each waits for
        raise PimlError(
            [Problem(what, f"still being deleted: {why}") for what, why in report.waiting_for.items()]
            + [
                Problem(
                    "piml teardown",
                    f"{len(report.waiting_for)} object(s) not gone within the bound",
                    "run piml teardown again to wait for them",
                )
            ],
            EXIT_FAILED,
        )


def _remove_external(cluster, as_json: bool) -> dict | None:
    """The ray_external hosts' workers go with the platform (they would keep calling a head that is gone)."""
    from piml.rayext.stage import remove

    result = remove(cluster, show=not as_json)
    return result.as_dict() if result else None


def _ok(external: dict | None) -> bool:
    return not external or not external["failures"]


def _raise_external(external: dict | None) -> None:
    if _ok(external):
        return
    assert external is not None
    problems = [Problem(host, message) for host, message in external["failures"].items()]
    problems.append(Problem("piml teardown", "a ray_external host's worker was not removed", "see above"))
    raise PimlError(problems, EXIT_FAILED)
