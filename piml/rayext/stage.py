"""The `ray-external` stage: the ray_external hosts join the cluster's Ray head as workers.

The playbook (playbooks/ray-external.yml) installs Ray and the service on each host; then the head is asked,
within a bound, whether each host is ALIVE with what it should offer. A host that cannot be reached (a Mac
asleep) is a warning on its row, never a failure of `piml up`: the cluster does not depend on it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING

from piml.errors import Problem
from piml.inventory import Node
from piml.k3s.stages import StageResult
from piml.rayext import units

if TYPE_CHECKING:
    from piml.project import Cluster

PLAYBOOK = "ray-external.yml"
TEARDOWN_PLAYBOOK = "ray-external-teardown.yml"
STAGE = "ray-external"


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def refusals(nodes: Sequence[Node], cluster_python: str) -> list[Problem]:
    """What in the inventory keeps a host from joining, found before anything runs (`piml up` exits 2 on them):
    a piml_ray_python of another minor (Ray pickles code between Pythons of one minor only), and an address that
    is a name (the NetworkPolicy opens the head to IP addresses only)."""
    problems = []
    for node in nodes:
        where = node.where or node.name
        wanted = node.ray.python if node.ray else None
        if wanted and ".".join(wanted.split(".")[:2]) != cluster_python:
            what = f"piml_ray_python {wanted} of '{node.name}' differs from the cluster's Python {cluster_python}"
            problems.append(Problem(where, what, f"set piml_ray_python: '{cluster_python}' or leave it out"))
        if units.ip_block(node) is None:
            what = f"'{node.name}' is reached as '{node.address}', a name: the Ray head is opened to IP addresses only"
            problems.append(Problem(where, what, "give it a fixed IP (a DHCP reservation) and set ansible_host to it"))
    return problems


def offer(node: Node) -> str:
    """What a host offers Ray, as the inventory says it: "4 CPU, 16 GB, gpu_apple_mps 1" (Ray detects the rest)."""
    worker = node.ray
    if worker is None:
        return ""
    parts = [f"{worker.num_cpus} CPU"] if worker.num_cpus is not None else ["CPUs as Ray detects"]
    if worker.num_gpus is not None:
        parts.append(f"{worker.num_gpus} GPU")
    if worker.memory_gb is not None:
        parts.append(f"{worker.memory_gb:g} GB")
    parts += [f"{name} {value}" for name, value in sorted(worker.resources.items())]
    return ", ".join(parts)


def describe(cluster: Cluster, nodes: list[Node]) -> list[str]:
    """What the stage would do on each host (`piml up --dry-run`)."""
    from piml.render.images import PYTHON

    config = cluster.config.ray
    return [
        f"{n.name}: Ray {config.version} in {units.VENV} (Python {(n.ray and n.ray.python) or PYTHON}), "
        f"service piml-ray-worker (systemd) or {units.LAUNCHD_LABEL} (launchd) joining the head's GCS on NodePort "
        f"{config.external.gcs_node_port or '(allocated)'} of ray-head-external, offering {offer(n)}; "
        f"wait <= {config.external.wait_timeout} s for it ALIVE; a host not reached is a warning"
        for n in nodes
        if n.ray is not None
    ]


def worker_vars(nodes: list[Node], head: units.Head, token: str, pip_args: list[str]) -> dict:
    """The playbook's variables: each host's service files rendered here, base64 so Ansible templates none."""
    from piml.ssh.fleet import login_user

    workers = {}
    for node in nodes:
        user = login_user(node)
        workers[node.name] = {
            "python": (node.ray.python if node.ray else None) or head.python,
            "unit_b64": _b64(units.systemd_unit(node, head, user)),
            "plist_b64": _b64(units.launchd_plist(node, head, user)),
            "env_b64": _b64(units.env_file(head)),
            "routes_plist_b64": _b64(units.launchd_routes_plist(head) or b""),
        }
    return {
        "piml_ray_version": head.ray_version,
        "piml_ray_token": token,
        "piml_pip_args": list(pip_args),
        "piml_ray_workers": workers,
    }


def join(
    cluster: Cluster,
    nodes: list[Node],
    head: units.Head,
    dashboard_url: str,
    token: str,
    show: bool,
    pip_args: Sequence[str] = (),
    wait_timeout: float = 120.0,
) -> StageResult:
    """Install and start each host's worker, then wait (bounded) until the head lists it ALIVE."""
    import time

    from piml.k3s.stages import run_playbook_stage
    from piml.rayext.nodes import HeadUnreachable, wait_joined

    started = time.monotonic()
    result = run_playbook_stage(
        cluster, STAGE, nodes, worker_vars(nodes, head, token, list(pip_args)), show, playbook=PLAYBOOK
    )
    unreached_are_warnings(result, "the cluster goes on without it")
    started_ok = [n for n in nodes if n.name not in result.failures and n.name not in result.warnings]
    if started_ok:
        try:
            joined = wait_joined(dashboard_url, token, started_ok, wait_timeout)
        except HeadUnreachable as exc:
            joined = {}
            result.failures.update({n.name: str(exc) for n in started_ok})
        for node in started_ok:
            seen = joined.get(node.name)
            if seen is None and node.name not in result.failures:
                result.failures[node.name] = (
                    f"not ALIVE in the Ray head with its resources after {wait_timeout:.0f} s; "
                    "see `journalctl -u piml-ray-worker` on it (macOS: /var/log/piml-ray-worker.log)"
                )
            elif seen is not None:
                result.hosts[node.name]["ray"] = {"node_id": seen.node_id, "resources": seen.resources}
                result.notes.append(f"{node.name}: Ray node ALIVE ({seen.shown()})")
    result.seconds = time.monotonic() - started
    _show(result, show)
    return result


def remove(cluster: Cluster, show: bool) -> StageResult | None:
    """`piml teardown`: every ray_external host stops its worker and loses what the stage put there. A host that
    cannot be reached is a warning (its worker keeps trying a head that is gone, harmlessly): run it again later."""
    from piml.k3s.stages import run_playbook_stage

    hosts = list(cluster.inventory.external)
    if not hosts:
        return None
    ran = run_playbook_stage(cluster, STAGE, hosts, {}, show, playbook=TEARDOWN_PLAYBOOK)
    unreached_are_warnings(ran, "its Ray worker is still installed; run piml teardown again")
    _show(ran, show)
    return ran


def unreached_are_warnings(ran: StageResult, consequence: str) -> None:
    """A ray_external host Ansible could not reach (asleep, away) is a warning on its row, never a failure."""
    for host, message in list(ran.failures.items()):
        if ran.hosts.get(host, {}).get("unreachable"):
            del ran.failures[host]
            ran.warnings[host] = f"not reached ({message}); {consequence}"


def _show(result: StageResult, show: bool) -> None:
    if show:
        from piml.output import console

        for line in result.notes + [f"{host}: warning: {text}" for host, text in result.warnings.items()]:
            console().print(f"ray-external  {line}", markup=False)
