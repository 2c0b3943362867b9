"""`piml upgrade --k3s VERSION`: move the cluster to another k3s release without losing anything; `--platform`:
the platform's services to the versions piml.yaml names (`piml up`'s platform and verify stages).

Before any node changes: every node must be in the cluster and Ready, the step must keep to Kubernetes' skew
policy (piml/k3s/upgrade.py), an air-gap directory must hold the new release, and a backup of the datastore and
the project is taken (piml/backup/take.py). Then playbooks/upgrade.yml upgrades the servers one at a time and the
agents `--max-unavailable` at a time, each cordoned, drained, upgraded, waited for and uncordoned. The first node
that fails stops the run; a re-run resumes. piml.yaml's k3s.version moves only when every node runs the new one.
"""

from __future__ import annotations

from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json


def run_upgrade(
    project: Path | None,
    inventory: Path | None,
    k3s: str | None,
    platform: bool,
    dry_run: bool,
    max_unavailable: int,
    drain_timeout: int,
    backup: bool,
    as_json: bool,
) -> None:
    if k3s is None and not platform:
        raise InputError(
            Problem(
                "piml upgrade",
                "nothing to upgrade",
                "give --k3s VERSION, or --platform after changing the versions in piml.yaml",
            )
        )
    if k3s is not None and platform and as_json:
        raise InputError(Problem("--json", "takes one of --k3s and --platform", "run them one after the other"))
    if k3s is not None:
        _upgrade_k3s(project, inventory, k3s, dry_run, max_unavailable, drain_timeout, backup, as_json)
    if platform:
        from piml.commands.up import run_up

        # the platform stage moves what piml.yaml's versions say: a new MLflow is backed up first and its store
        # migrated before the new server starts (piml/backup/take.py, templates/mlflow.yaml.j2); then verify
        run_up(project, inventory, "platform,verify", None, None, None, False, dry_run, as_json)


def _upgrade_k3s(
    project: Path | None,
    inventory: Path | None,
    k3s: str,
    dry_run: bool,
    max_unavailable: int,
    drain_timeout: int,
    backup: bool,
    as_json: bool,
) -> None:
    from piml.backup.take import cluster_kube
    from piml.k3s.upgrade import plan_upgrade, target_version
    from piml.project import ProjectPaths, load_cluster

    target_version(k3s)
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    kube = cluster_kube(cluster)
    running, arches = _running_versions(cluster, kube)
    servers = [n.name for n in cluster.inventory.servers]
    agents = [n.name for n in cluster.inventory.agents]
    plan = plan_upgrade(k3s, servers, agents, running, max_unavailable)
    show = (lambda line: None) if as_json else (lambda line: console().print(line, markup=False))
    if dry_run:
        _print_plan(cluster, plan, backup, drain_timeout, as_json)
        return
    airgap = _check_airgap(cluster, arches, k3s)
    archive = _backup_first(cluster, kube, show) if backup and plan.batches else None
    stage = _run_playbook(cluster, k3s, airgap, max_unavailable, drain_timeout, show=not as_json)
    after, _ = _running_versions(cluster, kube, require_ready=False)
    behind = [name for name in servers + agents if after.get(name) != k3s]
    pinned = _move_pin(cluster, k3s) if not behind and stage.ok else ""
    summary = {
        "target": k3s,
        "before": running,
        "after": after,
        "order": plan.batches,
        "backup": str(archive) if archive else None,
        "upgrade": stage.as_dict(),
        "pin": pinned,
        "ok": stage.ok and not behind,
    }
    if as_json:
        print_json(summary)
    if stage.ok and not behind:
        show(f"k3s {k3s} on every node ({', '.join(servers + agents)}); {pinned}")
        return
    problems = [Problem(node, message, "") for node, message in stage.failures.items()]
    problems.append(
        Problem(
            "piml upgrade",
            f"stopped: {', '.join(behind) or 'no node'} not at {k3s} (the others are, and run as before)",
            f"fix what is said above, then run `piml upgrade --k3s {k3s}` again: it resumes where it stopped "
            "(piml.yaml's pin moves when every node is there)",
        )
    )
    raise PimlError(problems, EXIT_FAILED)


def _running_versions(cluster, kube, require_ready: bool = True) -> tuple[dict[str, str], set[str]]:
    """Each inventory k3s node's kubelet version as the API reports it, and the nodes' architectures."""
    from piml.kube.objects import dig

    items = {item["metadata"]["name"]: item for item in kube.request("GET", "/api/v1/nodes").get("items") or []}
    running, arches = {}, set()
    for node in [*cluster.inventory.servers, *cluster.inventory.agents]:
        item = items.get(node.name)
        if item is None:
            if not require_ready:
                continue
            raise InputError(
                Problem(node.name, "is not in the cluster", "run `piml up` first (it installs k3s and joins the node)")
            )
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in dig(item, "status", "conditions") or []
        )
        # a cordoned node may be down: an upgrade that stopped on it left it so, and the re-run takes it on
        if require_ready and not ready and not dig(item, "spec", "unschedulable"):
            raise InputError(
                Problem(
                    node.name,
                    "is not Ready: an upgrade drains nodes one by one and needs every node working first",
                    "bring it back (piml status says why), or take it out of the inventory",
                )
            )
        running[node.name] = str(dig(item, "status", "nodeInfo", "kubeletVersion") or "")
        arches.add(str(dig(item, "metadata", "labels", "kubernetes.io/arch") or "arm64"))
    return running, arches


def _check_airgap(cluster, arches: set[str], target: str) -> Path | None:
    """An air-gap directory must hold the new release before the first node is drained: its binary carries
    its version string (k3s sets it at build time), which is looked for here; the playbook checks it again."""
    from piml.k3s import stages as st

    airgap = st.check_airgap(cluster, arches)
    if airgap is None:
        return None
    for arch in sorted(arches):
        binary = airgap / ("k3s" if arch == "amd64" else f"k3s-{arch}")
        if not _contains(binary, target.encode()):
            raise InputError(
                Problem(
                    cluster.paths.show(cluster.paths.config),
                    f"the air-gap binary {binary} is not k3s {target}",
                    f"put the {target} release's files (k3s binary, images, install.sh) in {airgap} first",
                )
            )
    return airgap


def _contains(path: Path, needle: bytes) -> bool:
    import mmap

    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(needle) >= 0
    except (OSError, ValueError):
        return False


def _backup_first(cluster, kube, show) -> Path:
    """The datastore and the project, before any node changes ("without a backup, a rollback is impossible",
    docs.k3s.io/upgrades/roll-back). A failure stops here: nothing is upgraded."""
    from piml.backup.take import UPGRADE_BACKUP_TIMEOUT, backup_dir, take_backup

    show("backing up before the upgrade (piml upgrade --no-backup to skip):")
    final, manifest = take_backup(
        cluster, kube, backup_dir(cluster, None), UPGRADE_BACKUP_TIMEOUT, lambda line: show(f"  {line}"), k3s_only=True
    )
    for what, why in manifest.left_out.items():
        show(f"  not in this backup: {what}: {why}")
    show(f"  backup: {cluster.paths.show(final)}")
    return final


def _run_playbook(cluster, target: str, airgap: Path | None, max_unavailable: int, drain_timeout: int, show: bool):
    from piml.k3s import stages as st
    from piml.k3s.token import cluster_token

    extravars = st.k3s_vars(cluster, airgap, cluster_token(cluster)[0])
    extravars.update(k3s_version=target, piml_max_unavailable=max(1, max_unavailable), piml_drain_timeout=drain_timeout)
    nodes = [*cluster.inventory.servers, *cluster.inventory.agents]
    return st.run_playbook_stage(cluster, "upgrade", nodes, extravars, show, playbook="upgrade.yml")


def _move_pin(cluster, target: str) -> str:
    """piml.yaml's k3s.version := target, the rest of the file as it was; what was done, in words."""
    from piml.fsutil import write_atomic
    from piml.k3s.pin import with_k3s_version
    from piml.k3s.stages import k3s_version

    where = cluster.paths.show(cluster.paths.config)
    if k3s_version(cluster) == target and "version" in cluster.config.k3s.model_fields_set:
        return f"{where} already pins it"
    path = cluster.paths.config
    text = path.read_text() if path.exists() else ""
    edited = with_k3s_version(text, target)
    if edited is None:
        return f"set `k3s.version: {target}` in {where} yourself (piml could not edit its layout safely)"
    write_atomic(path, edited, mode=path.stat().st_mode & 0o777 if path.exists() else 0o644)
    return f"{where} now pins k3s.version {target}"


def _print_plan(cluster, plan, backup: bool, drain_timeout: int, as_json: bool) -> None:
    wait = cluster.config.k3s.wait_timeout
    if as_json:
        print_json(
            {"target": plan.target, "running": plan.running, "order": plan.batches, "already": plan.already, "ok": True}
        )
        return
    out = console()
    out.print(f"piml upgrade --k3s {plan.target} (dry run: nothing changes)", markup=False)
    if not plan.batches:
        out.print(f"  every node runs {plan.target} already; only cordoned ones would be uncordoned", markup=False)
    elif backup:
        backups = cluster.paths.show(cluster.paths.root / "backups")
        out.print(f"  first: a backup of the k3s datastore and the project into {backups}/", markup=False)
    for step, batch in enumerate(plan.batches, 1):
        names = ", ".join(f"{name} ({plan.running[name]})" for name in batch)
        out.print(
            f"  {step}. {names}: cordon, drain (<= {drain_timeout} s), install {plan.target}, wait <= {wait} s "
            "for Ready at it, uncordon",
            markup=False,
        )
    if plan.already:
        out.print(f"  already at {plan.target}: {', '.join(plan.already)}", markup=False)
    out.print(f"  then piml.yaml's k3s.version becomes {plan.target}", markup=False)
