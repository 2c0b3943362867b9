"""Dask as rendered, run as ghcr.io/dask/dask runs it (prepare.sh, then the args), reached as the cluster
reaches it: the kubelet's probes, the worker finding the scheduler by its Service name, browsers through the
ingress (/dask), piml through a port-forward (dashboard) and an exec (a computation on the workers)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from piml.health.deep import Deadline, compute
from piml.health.endpoints import Endpoints
from piml.health.probes import dask_rows
from tests.contract.kubelet import http_get
from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def dask_pods(pod_network, tmp_path_factory):
    platform = start_platform("pi5-3x8gb", {}, tmp_path_factory.mktemp("dask"), pod_network)
    try:
        scheduler = platform.deployment("dask-scheduler")
        platform.kubelet.wait_probe(scheduler.container(), "readinessProbe", budget=120)
        worker = platform.deployment("dask-worker-arm64")
        platform.kubelet.wait_probe(worker.container(), "readinessProbe", budget=120)
        yield platform, scheduler, worker
    finally:
        platform.close()


def test_probes_and_the_worker_joins_by_service_name(dask_pods):
    """The worker's readiness (/health) can pass before it has registered: wait for the scheduler to count it."""
    platform, scheduler, worker = dask_pods
    deadline, answer = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        ok, answer = http_get(scheduler.ip, 8787, "/dask/json/counts.json", {"Host": f"{scheduler.ip}:8787"}, timeout=5)
        if ok and json.loads(answer.split(" ", 1)[1]).get("workers") == 1:
            return
        time.sleep(1)
    raise AssertionError(
        f"the worker (tcp://dask-scheduler:8786) never registered: {answer}\n{worker.container().tail()}"
    )


def test_browsers_through_the_ingress(dask_pods):
    platform, scheduler, _ = dask_pods
    for host in platform.node_addresses + platform.node_names:
        headers = {"Host": host, "X-Forwarded-For": "192.0.2.10", "X-Forwarded-Host": host, "X-Forwarded-Proto": "http"}
        ok, answer = http_get(scheduler.ip, 8787, "/dask/status", headers, timeout=10)
        assert ok and "<html" in answer.lower(), f"Host {host}: {answer[:200]}"


def test_piml_through_a_port_forward_and_exec(dask_pods):
    platform, scheduler, _ = dask_pods
    forward = platform.forward(scheduler, 8787)

    def in_scheduler(script: str) -> str:
        result = platform.kubelet.exec(scheduler, ["python", "-c", script], timeout=150)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    endpoints = Endpoints(dask_dashboard_url=f"{forward.url}/dask", dask_python=in_scheduler)
    rows = dask_rows(endpoints, platform.cluster.config)
    assert all(r.status == "pass" for r in rows), [str(r) for r in rows]
    assert "tasks ran on 1 of 1 worker" in compute(endpoints, platform.cluster.config, Deadline(150))


def test_one_python_for_every_image_that_runs_user_code(dask_pods):
    """Dask and Ray send pickled functions between clients and workers; code objects do not cross Python
    minor versions. The runner's MLflow image, Ray's and Dask's images must share one."""
    platform, _, _ = dask_pods
    found = {}
    for image, mirror in platform.mirrors.items():
        if mirror.bin is not None:
            out = subprocess.run(
                [str(mirror.bin / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            found[image] = out
    assert len(set(found.values())) == 1, found
