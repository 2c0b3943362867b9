"""`piml node add NAME=ADDRESS[:ROLE]` and `piml node remove NAME`: a board joins or leaves the cluster.

add: the inventory gets the host (its comments and layout kept, piml/inventory/edit.py), then `piml up` runs
limited to it: preflight, prepare, k3s (it joins), kubeconfig, and the platform with the capacity plan checked
again (stateful services stay on their volumes' nodes), then verify.
remove: refused while a volume lives on the node, for the only server, or when the servers left would lose
etcd quorum (`--force` passes the last two); then playbooks/node-remove.yml drains it, deletes it from the
cluster and uninstalls k3s, and the inventory loses the host. The first server can go: piml then reaches the
cluster through the next one (docs/day2-design.md section 7).
"""

from __future__ import annotations

import sys
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json


def run_node_add(
    project: Path | None,
    inventory: Path | None,
    spec_text: str,
    until: str | None,
    accept_new: bool,
    as_json: bool,
) -> None:
    from piml.inventory import Role
    from piml.inventory.edit import with_host
    from piml.project import ProjectPaths, load_cluster
    from piml.scaffold import parse_node_spec

    spec = parse_node_spec(spec_text)
    role = spec.role or Role.AGENT
    paths = ProjectPaths.resolve(project, inventory)
    cluster = load_cluster(paths)
    where = paths.show(paths.inventory)
    if role not in (Role.SERVER, Role.AGENT):
        raise InputError(Problem(f"--node {spec_text}", "node add takes servers and agents", "ROLE: server or agent"))
    for node in cluster.inventory.nodes:
        if node.name == spec.name:
            raise InputError(Problem(where, f"{spec.name} is in the inventory already", "give the new board its name"))
        if node.address == spec.address:
            raise InputError(Problem(where, f"{node.name} has the address {spec.address}", "check the address"))
    if role is Role.SERVER and len(cluster.inventory.servers) == 1:
        raise InputError(
            Problem(
                spec.name,
                "the cluster's single server keeps its datastore in SQLite, and piml does not convert it to embedded "
                "etcd (k3s can: https://docs.k3s.io/datastore/ha-embedded)",
                "add the board as an agent (:agent), or start an HA cluster with three servers",
            )
        )
    text = paths.inventory.read_text()
    edited = with_host(text, role.value, spec.name, spec.address)
    if edited is None:
        raise InputError(
            Problem(
                where,
                f"piml cannot add {spec.name} to this inventory's layout safely",
                f"add it under k3s_cluster.children.{role.value}.hosts yourself (ansible_host: {spec.address}), "
                f"then run piml up --limit {spec.name}",
            )
        )
    _write(paths.inventory, edited)
    if not as_json:
        console().print(f"{where}: {spec.name} ({spec.address}) added as {role.value}", markup=False)
    from piml.commands.up import run_up

    # the node joins (prepare, k3s on it alone), then the platform is planned and applied again for everyone
    run_up(project, inventory, None, None, until, spec.name, accept_new, False, as_json)


def run_node_remove(
    project: Path | None, inventory: Path | None, name: str, force: bool, yes: bool, as_json: bool
) -> None:
    from piml.backup.take import cluster_kube
    from piml.inventory import Role
    from piml.inventory.edit import without_host
    from piml.project import ProjectPaths, load_cluster

    paths = ProjectPaths.resolve(project, inventory)
    cluster = load_cluster(paths)
    where = paths.show(paths.inventory)
    node = next((n for n in cluster.inventory.nodes if n.name == name), None)
    if node is None or node.role is Role.EXTERNAL:
        raise InputError(Problem(name, "is no k3s node of this inventory", "piml inventory show lists them"))
    servers = cluster.inventory.servers
    if [s.name for s in servers] == [node.name]:
        raise InputError(
            Problem(name, "is the only server", "keep it; to retire the whole cluster: piml teardown --k3s")
        )
    kube = cluster_kube(cluster)
    refusals = _volumes_on(kube, cluster, name) + (_quorum(kube, cluster, name) if node.role is Role.SERVER else [])
    if refusals and not force:
        raise InputError(refusals)
    edited = without_host(paths.inventory.read_text(), node.role.value, name)
    if not yes:
        _confirm(name, refusals)
    successor = _reach_through_successor(cluster, node)
    endpoint = cluster.inventory.k3s_vars.api_endpoint
    if successor:  # the node is read through the next server from now on
        kube.close()
        kube = cluster_kube(cluster)
    from piml.k3s.stages import run_playbook_stage

    result = run_playbook_stage(cluster, "node-remove", [node], {}, show=not as_json, playbook="node-remove.yml")
    failure = result.failures.get(name, "") or result.failures.get("cluster", "")
    # the cluster says whether the node left it (a dead board's uninstall fails, yet its drain and delete,
    # which run on another server, may have worked): one bounded request, not a guess from the failure's text
    gone = kube.get(f"/api/v1/nodes/{name}") is None
    if gone and edited is not None:
        _write(paths.inventory, edited)
    summary = {"node": name, "removed": gone, "inventory": edited is not None and gone, **result.as_dict()}
    if as_json:
        print_json(summary)
    if not gone:
        raise PimlError(
            [
                Problem(name, failure, ""),
                Problem("piml node remove", f"{name} is still in the cluster", "fix what is said, then run it again"),
            ],
            EXIT_FAILED,
        )
    out = (lambda line: None) if as_json else (lambda line: console().print(line, markup=False))
    if failure:
        out(f"{name}: taken out of the cluster, but k3s is still on the board ({failure}); wipe it before reuse")
    if edited is None:
        out(f"{name}: remove it from {where} yourself (piml cannot edit this inventory's layout safely)")
    else:
        out(f"{name}: removed from the cluster and from {where}")
    if successor:
        out(f"{successor}: now the first server{'' if endpoint else '; piml reaches the cluster through it'}")
        if not endpoint:
            out(
                f"the other nodes' k3s config still names {name} (k3s does not need it to start again); "
                f"piml up points them and your kubeconfig at {successor}"
            )


def _reach_through_successor(cluster, node) -> str | None:
    """When the first server goes, the next one in the inventory takes its place: the project's kubeconfig is
    pointed at it now (unless `api_endpoint` names a load balancer or VIP), before the first server stops."""
    from piml.k3s import kubeconfig as kc

    servers = cluster.inventory.servers
    if node.name != servers[0].name:
        return None
    if not cluster.inventory.k3s_vars.api_endpoint:
        kc.repoint(
            cluster.paths.kubeconfig, kc.server_url(servers[1].address), cluster.paths.show(cluster.paths.kubeconfig)
        )
    return servers[1].name


def _volumes_on(kube, cluster, name: str) -> list[Problem]:
    from piml.kube.volumes import claim_nodes

    namespace = cluster.config.namespace
    return [
        Problem(
            name,
            f"holds the volume of {claim} (local-path: its data is only on this board)",
            "back it up (piml backup), then either keep the node, or delete the claim "
            f"(kubectl -n {namespace} delete pvc {claim}: its data there is lost) so it starts afresh elsewhere "
            "and restore the backup (piml restore); --force removes the node and its data anyway",
        )
        for claim, node in sorted(claim_nodes(kube, namespace).items())
        if node == name
    ]


def _quorum(kube, cluster, name: str) -> list[Problem]:
    """etcd needs a majority of its members: the servers left after this one goes must have one Ready."""
    from piml.kube.objects import dig

    items = {i["metadata"]["name"]: i for i in kube.request("GET", "/api/v1/nodes").get("items") or []}
    left = [s.name for s in cluster.inventory.servers if s.name != name]
    ready = [
        s
        for s in left
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in dig(items.get(s, {}), "status", "conditions") or []
        )
    ]
    need = len(left) // 2 + 1
    if len(ready) >= need:
        return []
    return [
        Problem(
            name,
            f"removing it leaves {len(left)} servers with {len(ready)} Ready, and etcd needs {need} for quorum",
            "bring the other servers back first (piml status); --force removes it anyway",
        )
    ]


def _confirm(name: str, refusals: list[Problem]) -> None:
    if not sys.stdin.isatty():
        raise InputError(
            Problem("piml node remove", "asks for confirmation, but there is no terminal to ask on", "pass --yes")
        )
    import typer

    risk = "; ".join(str(p) for p in refusals)
    if not typer.confirm(f"Drain {name}, delete it from the cluster and uninstall k3s from it? {risk}", default=False):
        console().print("nothing was changed")
        raise SystemExit(1)


def _write(path: Path, text: str) -> None:
    from piml.fsutil import write_atomic

    write_atomic(path, text, mode=path.stat().st_mode & 0o777)
