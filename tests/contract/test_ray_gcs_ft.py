"""Ray with GCS fault tolerance (`ray.gcs_fault_tolerance: true`): the head keeps its GCS state in the
platform's Redis, found by the Service name the RayCluster gives, with the password from Redis's Secret. A
head that is replaced comes back with the cluster's state (a finished job is still listed)."""

from __future__ import annotations

import time

import pytest

from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


def test_a_replaced_head_keeps_the_clusters_state_in_redis(pod_network, tmp_path):
    platform = start_platform("pi5-3x8gb", {"ray": {"gcs_fault_tolerance": True}}, tmp_path, pod_network)
    try:
        redis = platform.deployment("redis")
        platform.kubelet.wait_probe(redis.container(), "readinessProbe", budget=60)
        head, _ = platform.ray_cluster(worker_groups=0)
        container = head.container("ray-head")
        assert container.env.get("RAY_REDIS_ADDRESS") == "redis:6379", "KubeRay did not pass the Redis address"
        platform.kubelet.wait_probe(container, "readinessProbe", budget=180)
        job = platform.ray_dashboard(
            head, "POST", body={"entrypoint": "echo piml-ft", "submission_id": "piml-ft-check"}
        )
        deadline = time.monotonic() + 120
        job_path = f"/api/jobs/{job['submission_id']}"
        while platform.ray_dashboard(head, path=job_path)["status"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(1)
        keys = platform.kubelet.exec(redis, ["sh", "-c", 'redis-cli --no-auth-warning -a "$REDIS_PASSWORD" DBSIZE'])
        assert int(keys.stdout.strip() or 0) > 0, f"the head stored nothing in Redis: {keys.stdout}{keys.stderr}"

        platform.kubelet.delete(head)
        again = platform.ray_head("ray-head-1")
        platform.kubelet.wait_probe(again.container("ray-head"), "readinessProbe", budget=180)
        # Ready says the raylet and GCS answer; the dashboard (Jobs API) may take a moment more, as after any head
        # restart: a client retries connection refused for a while (bounded)
        deadline = time.monotonic() + 60
        while True:
            try:
                listed = {j.get("submission_id") for j in platform.ray_dashboard(again)}
                break
            except AssertionError as exc:
                if "Connection refused" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert "piml-ft-check" in listed, (
            f"the new head does not know the job: {listed}\n{again.container('ray-head').tail()}"
        )
    finally:
        platform.close()
