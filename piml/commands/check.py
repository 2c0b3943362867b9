"""`piml check` (and the `verify` stage of `piml up`): prove the platform works, one table of pass/fail.

Node checks (SSH) run beside the cluster and component checks (Kubernetes API), so the slowest group
sets the time, not their sum.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from piml.errors import EXIT_FAILED, PimlError, Problem

if TYPE_CHECKING:
    from piml.health.result import Result
    from piml.inventory import Node
    from piml.project import Cluster

GROUPS = ("nodes", "cluster", "components")


def run_check(project: Path | None, inventory: Path | None, deep: bool, limit: str | None, as_json: bool) -> None:
    from piml.health import report
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = select_nodes(cluster.inventory.nodes, limit, k3s_only=True)  # a --limit selecting no k3s node: exit 2
    started = time.monotonic()
    outside = list(cluster.inventory.external) if limit is None else []  # the whole cluster: a row each
    results = check_cluster(cluster, deep=deep, nodes=nodes, outside=outside)
    report.show(results, time.monotonic() - started, "piml check --deep" if deep else "piml check", json=as_json)
    raise_on_failure(results)


def check_cluster(
    cluster: Cluster,
    deep: bool = False,
    limit: str | None = None,
    nodes: list[Node] | None = None,
    outside: list[Node] | None = None,
) -> list[Result]:
    """The checks on `nodes` (k3s nodes: ray_external hosts are left out), else on what `limit` selects; the
    `outside` hosts (ray_external) are asked whether they answer (their Ray rows come with Ray's)."""
    from piml.health.nodes import node_checks
    from piml.inventory import Role
    from piml.reach import select_nodes

    nodes = (
        select_nodes(cluster.inventory.nodes, limit, k3s_only=True)
        if nodes is None
        else [n for n in nodes if n.role is not Role.EXTERNAL]
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="piml-node-checks") as pool:
        on_nodes = pool.submit(node_checks, cluster, nodes + list(outside or []))
        rest = _platform_checks(cluster, deep)
        return on_nodes.result() + rest


def _platform_checks(cluster: Cluster, deep: bool) -> list[Result]:
    from piml.health.cluster import api_down, cluster_checks
    from piml.health.connect import open_cluster_endpoints
    from piml.health.probes import component_checks
    from piml.health.result import FAIL, Result
    from piml.kube.client import connect

    kubeconfig = cluster.paths.kubeconfig
    try:
        kube = connect(kubeconfig, cluster.paths.show(kubeconfig))
    except PimlError as exc:
        problem = exc.problems[0]
        return [Result("cluster", "cluster", "API", FAIL, f"{problem.where}: {problem.what}", problem.fix)]
    try:
        results = cluster_checks(kube, cluster)
    finally:
        kube.close()
    if api_down(results):
        return results  # no API, so no port-forward either: one clear failure instead of one per component
    with open_cluster_endpoints(cluster) as endpoints:  # a component it cannot bridge fails its probe, saying why
        results += component_checks(endpoints, cluster.config)
        if cluster.config.ray.enabled and cluster.inventory.external:
            from piml.health.external import ray_worker_rows
            from piml.health.probes import GROUP

            results += ray_worker_rows(endpoints, cluster.inventory.external, GROUP)
        if deep:
            from piml.health.deep import deep_checks

            results += deep_checks(endpoints, cluster.config, ray_pip=ray_pip(cluster))
    return results


def ray_pip(cluster: Cluster) -> list[str]:
    """What the deep check's Ray job needs beyond the Ray image (images.model_pip), unless piml.yaml says
    (ray.check_pip)."""
    from piml.render.images import model_pip

    if cluster.config.ray.check_pip is not None:
        return list(cluster.config.ray.check_pip)
    return model_pip(cluster.config.mlflow.version)


def raise_on_failure(results: list[Result]) -> None:
    failed = [r for r in results if r.failed]
    if failed:
        names = ", ".join(f"{r.target} {r.check}" for r in failed[:6]) + (", ..." if len(failed) > 6 else "")
        raise PimlError(
            Problem("piml check", f"{len(failed)} check(s) failed: {names}", "see the detail and fix columns above"),
            EXIT_FAILED,
        )
