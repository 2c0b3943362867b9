"""What `piml status` shows of the cluster and the platform: nodes, versions, components, URLs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from piml.errors import PimlError
from piml.kube.client import Kube, connect
from piml.kube.discovery import Discovery
from piml.kube.objects import dig
from piml.kube.prune import project_objects
from piml.kube.wait import readiness, route_rows

if TYPE_CHECKING:
    from piml.project import Cluster

PRESSURES = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
WORKLOAD_KINDS = ("Deployment", "RayCluster", "HelmChart", "RayService", "CronJob")


def cluster_status(cluster: Cluster, kubeconfig: Path, request_timeout: float = 10.0) -> dict:
    """{"reachable", "server", "version", "nodes", "components", "volumes", "urls", "healthy"}; when the API
    cannot be reached: {"reachable": False, "error": "<one line>"} (status shows what it can, it does not fail)."""
    from piml.render.manifests import urls

    try:
        kube = connect(kubeconfig, cluster.paths.show(kubeconfig), request_timeout)
    except PimlError as exc:
        return {"reachable": False, "error": str(exc.problems[0])}
    try:
        result = read_status(kube, cluster.name)
    except PimlError as exc:
        return {"reachable": False, "error": str(exc.problems[0])}
    finally:
        kube.close()
    result["urls"] = urls(cluster) if result["components"] else {}
    return result


def read_status(kube: Kube, project: str) -> dict:
    version = kube.request("GET", "/version").get("gitVersion")
    nodes = [node_row(n) for n in dig(kube.request("GET", "/api/v1/nodes"), "items", default=[])]
    live = project_objects(kube, Discovery(kube), project)
    components = [row for o in live if o["kind"] in WORKLOAD_KINDS for row in workload_rows(o)]
    volumes = [
        {
            "name": o["metadata"]["name"],
            "namespace": o["metadata"].get("namespace"),
            "phase": dig(o, "status", "phase", default="Pending"),
            "size": dig(o, "spec", "resources", "requests", "storage"),
        }
        for o in live
        if o["kind"] == "PersistentVolumeClaim"
    ]
    healthy = all(n["ready"] and not n["pressure"] for n in nodes) and all(c["ready"] for c in components)
    return {
        "reachable": True,
        "server": kube.server,
        "version": version,
        "nodes": nodes,
        "components": components,
        "volumes": volumes,
        "healthy": healthy and bool(nodes),
    }


def node_row(node: dict) -> dict:
    status = node.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in dig(status, "conditions", default=[])}
    labels = dig(node, "metadata", "labels", default={})
    roles = sorted(k.rpartition("/")[2] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = dig(status, "nodeInfo", default={})
    return {
        "name": node["metadata"]["name"],
        "ready": conditions.get("Ready") == "True",
        "pressure": [p for p in PRESSURES if conditions.get(p) == "True"],
        "unschedulable": bool(dig(node, "spec", "unschedulable")),
        "roles": roles,
        "kubelet": info.get("kubeletVersion"),
        "arch": info.get("architecture") or labels.get("kubernetes.io/arch"),
        "os": info.get("osImage"),
        "memory": dig(status, "allocatable", "memory"),
    }


def workload_rows(obj: dict) -> list[dict]:
    """The rows of one live workload: a RayService has one per route (Serve application), the others one."""
    return route_rows(obj) if obj["kind"] == "RayService" else [component_row(obj)]


def component_row(obj: dict) -> dict:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    row = {
        "component": dig(meta, "labels", "app.kubernetes.io/name", default=meta["name"]),
        "kind": obj["kind"],
        "namespace": meta.get("namespace"),
        "name": meta["name"],
    }
    if obj["kind"] == "HelmChart":
        failed = [
            c for c in dig(status, "conditions", default=[]) if c.get("type") == "Failed" and c.get("status") == "True"
        ]
        return {
            **row,
            "ready": not failed,
            "state": "failed" if failed else "applied",
            "chart": f"{dig(obj, 'spec', 'chart')} {dig(obj, 'spec', 'version', default='')}".strip(),
        }
    if obj["kind"] == "CronJob":
        return {**row, **scheduled_runs(obj)}
    ok, detail = readiness(obj)
    if obj["kind"] == "Deployment":
        want = dig(obj, "spec", "replicas", default=1)
        return {
            **row,
            "ready": ok,
            "ready_replicas": dig(status, "readyReplicas", default=0),
            "replicas": want,
            "state": detail,
        }
    return {
        **row,
        "ready": ok,
        "state": status.get("state") or "pending",
        "ready_workers": dig(status, "readyWorkerReplicas", default=0),
    }


def scheduled_runs(obj: dict) -> dict:
    """A CronJob's (the scheduled backup's) state from what the cronjob controller records: fine unless its last
    run ended without success (then lastScheduleTime is later than lastSuccessfulTime, and no Job is active)."""
    status = obj.get("status") or {}
    scheduled, succeeded = status.get("lastScheduleTime"), status.get("lastSuccessfulTime")
    schedule = dig(obj, "spec", "schedule", default="")
    if dig(obj, "spec", "suspend"):
        return {"ready": True, "state": f"suspended ({schedule})"}
    if status.get("active"):
        return {"ready": True, "state": f"running since {scheduled}"}
    # both RFC 3339 in UTC at whole seconds, as the API server writes them: compared as text
    if scheduled and (not succeeded or succeeded < scheduled):
        before = f"; last success {succeeded}" if succeeded else "; none succeeded yet"
        return {"ready": False, "state": f"the run of {scheduled} failed{before}"}
    if succeeded:
        return {"ready": True, "state": f"last success {succeeded} ({schedule})"}
    return {"ready": True, "state": f"not run yet ({schedule})"}
