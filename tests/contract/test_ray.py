"""Ray as KubeRay runs it: the RayCluster piml renders, turned into Pods by KubeRay's own pod builders, each
container run from a Ray image mirror with the operator's command, args, env and probes. Reached as the
cluster reaches it: the kubelet's probes, a worker joining the head through its Service (the operator's
headless `ray-head-svc`, which selects on the operator's labels), browsers through the ingress (/ray, prefix
stripped), piml through a port-forward with the token."""

from __future__ import annotations

import pytest

from piml.health.endpoints import Endpoints
from piml.health.probes import ray_rows
from tests.contract.kubelet import http_get
from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


SCENARIOS = {"default": "pi5-3x8gb", "amd64-server": "amd64-server-arm64-agents"}


@pytest.fixture(scope="module", params=SCENARIOS, ids=SCENARIOS)
def ray_pods(request, pod_network, tmp_path_factory):
    platform = start_platform(SCENARIOS[request.param], {}, tmp_path_factory.mktemp("ray"), pod_network)
    try:
        head, workers = platform.ray_cluster()
        yield platform, head, workers
    finally:
        platform.close()


def test_head_probes_pass_within_the_kubelets_budget(ray_pods):
    platform, head, _ = ray_pods
    container = head.container("ray-head")
    platform.kubelet.wait_probe(container, "livenessProbe")  # a failing liveness probe restarts the head
    platform.kubelet.wait_probe(container, "readinessProbe", budget=180)


def test_a_worker_joins_through_the_head_service(ray_pods):
    """The worker's init container waits for the GCS at ray-head-svc...:6379; the Service must select the head."""
    platform, head, workers = ray_pods
    assert platform.kubelet.resolve(f"ray-head-svc.{platform.ns}.svc.cluster.local") == head.ip, (
        "ray-head-svc selects no pod: the head pod's labels do not match KubeRay's Service selector"
    )
    for worker in workers:
        assert ("wait-gcs-ready", 0) in worker.init_results
        platform.kubelet.wait_probe(worker.container(), "readinessProbe", budget=180)


def test_browsers_through_the_ingress_need_the_token(ray_pods):
    platform, head, _ = ray_pods
    platform.kubelet.wait_probe(head.container("ray-head"), "readinessProbe", budget=180)
    token = platform.secret("ray-auth", "auth_token")
    for host in platform.node_addresses + platform.node_names:
        # Traefik's stripPrefix middleware: /ray/api/version reaches the dashboard as /api/version.
        headers = {
            "Host": host,
            "X-Forwarded-For": "192.0.2.10",
            "X-Forwarded-Host": host,
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Prefix": "/ray",
        }
        ok, answer = http_get(head.ip, 8265, "/api/version", headers, timeout=10)
        assert not ok and answer.startswith("401"), (
            f"Host {host}: the dashboard answers without a token: {answer[:120]}"
        )
        ok, answer = http_get(
            head.ip, 8265, "/api/version", {**headers, "Authorization": f"Bearer {token}"}, timeout=10
        )
        assert ok and "ray_version" in answer, f"Host {host}: {answer[:200]}"
        ok, answer = http_get(head.ip, 8265, "/", headers, timeout=10)  # the page that asks for the token
        assert ok, f"Host {host}: {answer[:200]}"


def test_piml_through_a_port_forward(ray_pods):
    platform, head, workers = ray_pods
    for worker in workers:
        platform.kubelet.wait_probe(worker.container(), "readinessProbe", budget=180)
    forward = platform.forward(head, 8265)
    endpoints = Endpoints(ray_dashboard_url=forward.url, ray_token=platform.secret("ray-auth", "auth_token"))
    rows = ray_rows(endpoints, platform.cluster.config)
    assert all(r.status == "pass" for r in rows), [str(r) for r in rows]
    nodes = next(r for r in rows if r.check == "nodes")
    assert nodes.detail.startswith(f"{1 + len(workers)} nodes alive (1 head)"), nodes.detail
