"""Cluster checks through the Kubernetes API: every node registered and Ready without pressure, every
platform workload ready, KEDA serving external metrics (without it no request ever becomes a Job)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from piml.health.result import WARN, CheckFailed, Result, timed
from piml.kube.objects import dig
from piml.kube.status import WORKLOAD_KINDS, node_row, workload_rows

if TYPE_CHECKING:
    from piml.kube.client import Kube
    from piml.project import Cluster

KEDA_NAMESPACE = "keda"
KEDA_DEPLOYMENTS = ("keda-operator", "keda-operator-metrics-apiserver")
KEDA_APISERVICE = "v1beta1.external.metrics.k8s.io"


def cluster_checks(kube: Kube, cluster: Cluster) -> list[Result]:
    from piml.kube.discovery import Discovery
    from piml.kube.prune import project_objects

    results = _node_results(kube, cluster)
    if api_down(results):  # nothing more to ask it
        return results
    live = project_objects(kube, Discovery(kube), cluster.name)
    for obj in live:
        if obj["kind"] in WORKLOAD_KINDS:
            results += [_workload_result(row, cluster.config.namespace) for row in workload_rows(obj)]
    if cluster.config.queue.enabled:
        results.append(timed("cluster", "keda", "serving metrics", lambda: _keda(kube)))
    return results


def api_down(results: list[Result]) -> bool:
    """Whether the cluster rows say the API did not answer (then they are that one row)."""
    return len(results) == 1 and results[0].target == "cluster" and results[0].failed


def _node_results(kube: Kube, cluster: Cluster) -> list[Result]:
    found: dict[str, dict] = {}

    def listing() -> str:
        nodes = dig(kube.request("GET", "/api/v1/nodes"), "items", default=[])
        found.update((row["name"], row) for row in (node_row(n) for n in nodes))
        return f"{len(found)} registered"

    listed = timed("cluster", "cluster", "nodes", listing)
    if listed.failed:
        return [listed]
    return [
        _cordoned(
            timed("cluster", node.name, "Ready", lambda node=node: _node_ready(found.get(node.name), node.name)),
            found.get(node.name),
        )
        for node in cluster.inventory.cluster_nodes
    ]


def _cordoned(result: Result, row: dict | None) -> Result:
    """A Ready node that takes no new pods is a warning: a drain, or a `piml upgrade` that stopped, left it so."""
    if result.failed or not row or not row.get("unschedulable"):
        return result
    return replace(
        result,
        status=WARN,
        detail=f"{result.detail}; cordoned (SchedulingDisabled): no new pods go there",
        fix=f"kubectl uncordon {result.target} when it is fit; if a piml upgrade stopped on it, run that again",
    )


def _node_ready(row: dict | None, name: str) -> str:
    if row is None:
        raise CheckFailed(
            "not registered in the cluster",
            f"see why k3s did not join: on {name}, sudo journalctl -u k3s-agent -n 50 (k3s on servers)",
        )
    if not row["ready"]:
        raise CheckFailed("NotReady", f"kubectl describe node {name}; on the node: sudo journalctl -u k3s -n 50")
    if row["pressure"]:
        raise CheckFailed(
            ", ".join(row["pressure"]), f"kubectl describe node {name}: free memory or disk on it, or move work off it"
        )
    return f"Ready, no pressure ({row['kubelet'] or 'k3s'}, {row['arch']})"


def _workload_result(row: dict, namespace: str) -> Result:

    def body() -> str:
        if not row["ready"]:
            where = row["namespace"] or namespace
            look = {
                "HelmChart": f"kubectl -n kube-system logs job/helm-install-{row['name']}",
                "CronJob": f"kubectl -n {where} logs -l app.kubernetes.io/name={row['component']} --tail 20",
            }.get(row["kind"], f"kubectl -n {where} describe {row['kind'].lower()} {row['name']}")
            raise CheckFailed(f"{row['kind']} {row['name']} not ready ({row['state']})", look)
        return f"{row['kind']} {row['name']} {row['state']}"

    result = timed("cluster", row["component"], "ready", body)
    if row["kind"] == "CronJob" and result.failed:  # the platform works; its last scheduled backup did not
        return replace(result, status=WARN)
    return result


def _keda(kube: Kube) -> str:
    for name in KEDA_DEPLOYMENTS:
        deployment = kube.get(f"/apis/apps/v1/namespaces/{KEDA_NAMESPACE}/deployments/{name}")
        if deployment is None:
            raise CheckFailed(
                f"no {name} Deployment in namespace {KEDA_NAMESPACE}",
                "see how the KEDA chart install went: kubectl -n kube-system logs job/helm-install-keda",
            )
        if not dig(deployment, "status", "availableReplicas"):
            raise CheckFailed(f"{name} has no available replica", f"kubectl -n {KEDA_NAMESPACE} describe deploy/{name}")
    service = kube.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{KEDA_APISERVICE}")
    conditions = {c.get("type"): c for c in dig(service, "status", "conditions", default=[])}
    available = conditions.get("Available", {})
    if available.get("status") != "True":
        raise CheckFailed(
            f"the external metrics API is not available ({available.get('message') or 'no APIService'})",
            f"kubectl -n {KEDA_NAMESPACE} logs deploy/keda-operator-metrics-apiserver",
        )
    return "operator and metrics server available"
