"""Where the ray_external hosts join: the cluster's Ray head, found through the Kubernetes API.

The GCS address the hosts dial is the head pod's node and the NodePort of `ray-head-external`, as the Service
holds it (Kubernetes allocates it unless piml.yaml fixes it). Its externalTrafficPolicy is Local: only that node
answers, and it keeps the host's address for the NetworkPolicy.
piml itself asks the head's dashboard through a port-forward, with the Ray token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from piml.errors import PimlError, Problem
from piml.health.connect import RAY_DASHBOARD_PORT, RAY_HEAD_SELECTOR
from piml.rayext.units import Head

if TYPE_CHECKING:
    from piml.project import Cluster

SERVICE = "ray-head-external"  # templates/ray.yaml.j2


def pod_routes(nodes: list[dict]) -> tuple[tuple[str, str], ...]:
    """(podCIDR, InternalIP) of each node that has both: where a host outside the cluster sends pod traffic."""
    routes = []
    for node in nodes:
        cidr = (node.get("spec") or {}).get("podCIDR")
        addresses = (node.get("status") or {}).get("addresses") or []
        internal = next((a.get("address") for a in addresses if a.get("type") == "InternalIP"), None)
        if cidr and internal:
            routes.append((cidr, internal))
    return tuple(sorted(routes))


@contextmanager
def cluster_head(cluster: Cluster) -> Iterator[tuple[Head, str]]:
    """(the head as the hosts reach it, a loopback URL of its dashboard) while the port-forward lasts."""
    from kubernetes.client.rest import ApiException

    from piml.kube.client import REQUEST_TIMEOUT, core_api
    from piml.kube.podexec import first_ready
    from piml.queue.tunnel import _refused, forward, list_pods, unreachable, urllib3_errors
    from piml.render.images import PYTHON

    config = cluster.config
    path = cluster.paths.kubeconfig
    api = core_api(path, cluster.paths.show(path))
    namespace = config.namespace
    try:
        pods = list_pods(api, namespace, RAY_HEAD_SELECTOR)
        service = api.read_namespaced_service(SERVICE, namespace, _request_timeout=REQUEST_TIMEOUT)
        # raw JSON: only two fields are wanted, and the client's typed models refuse a node missing any nodeInfo
        raw = api.list_node(_request_timeout=REQUEST_TIMEOUT, _preload_content=False)
        nodes = json.loads(raw.data).get("items") or []
    except ApiException as exc:
        if exc.status == 404:  # the platform stage has not run with ray_external hosts in the inventory yet
            fix = "run `piml up --only platform` first (it opens the head's GCS to the ray_external hosts)"
            raise PimlError(Problem("ray head", f"no Service {SERVICE} in namespace {namespace}", fix), 1) from None
        raise _refused(namespace, f"read the ray head's pod and Service {SERVICE}", exc) from None
    except (OSError, urllib3_errors()) as exc:
        raise unreachable(api, exc) from None
    except ValueError:  # not JSON: not an API server
        raise PimlError(Problem("ray head", "the Kubernetes API answered the node list with no JSON"), 1) from None
    name = first_ready(pods, "ray head")
    host_ip = next(p["status"].get("hostIP") for p in pods if p["metadata"]["name"] == name)
    gcs = f"{host_ip}:{service.spec.ports[0].node_port}"
    head = Head(gcs, config.ray.version, PYTHON, config.ray.gcs_fault_tolerance, pod_routes(nodes))
    forwarder = forward(api, config.namespace, RAY_HEAD_SELECTOR, RAY_DASHBOARD_PORT, "ray")
    try:
        yield head, f"http://127.0.0.1:{forwarder.port}"
    finally:
        forwarder.close()


def external_workers(cluster: Cluster) -> dict[str, str]:
    """{host: what the Ray head says of it} for `piml status`, as `piml check`'s ray worker rows say it;
    {"": why} when the head cannot be asked (never raises: status shows what it can)."""
    from piml.health.endpoints import Endpoints
    from piml.health.external import ray_worker_rows
    from piml.kube.client import core_api
    from piml.queue.tunnel import forward
    from piml.secrets import load_existing

    try:
        path = cluster.paths.kubeconfig
        api = core_api(path, cluster.paths.show(path))
        forwarder = forward(api, cluster.config.namespace, RAY_HEAD_SELECTOR, RAY_DASHBOARD_PORT, "ray")
    except PimlError as exc:
        return {"": str(exc.problems[0])}
    try:
        token = load_existing(cluster.paths.state).get("ray_auth_token", "")
        endpoints = Endpoints(ray_dashboard_url=f"http://127.0.0.1:{forwarder.port}", ray_token=token)
        rows = ray_worker_rows(endpoints, cluster.inventory.external, "status")
    finally:
        forwarder.close()
    return {row.target: row.detail for row in rows}
