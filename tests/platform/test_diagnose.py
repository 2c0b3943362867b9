"""On a readiness timeout, say plainly why. Each fault is injected into the kubelet stand-in, which reports it as
a kubelet does; the Pending case is the real scheduler's own answer on nodes too small."""

from __future__ import annotations

import time

import pytest

from piml.errors import EXIT_FAILED
from piml.kube.deploy import DeployError, deploy
from tests.platform.conftest import SHORT, Project, purge


def failed_deploy(project, settings=None) -> tuple[DeployError, float]:
    cluster, rendered = project.render(settings)
    started = time.monotonic()
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    assert caught.value.exit_code == EXIT_FAILED
    return caught.value, time.monotonic() - started


def rendered_container(project, kind, name, container=0):
    _, rendered = project.render()
    obj = next(o for r in rendered for o in r.objects if o["kind"] == kind and o["metadata"]["name"] == name)
    spec = obj["spec"]["template"]["spec"] if kind == "Deployment" else obj["spec"]["headGroupSpec"]["template"]["spec"]
    return spec["containers"][container]


def test_image_pull_failure(project, plane):
    plane.inject("mlflow", "image-pull")
    error, took = failed_deploy(project)
    image = rendered_container(project, "Deployment", "mlflow")["image"]
    assert [str(p) for p in error.problems] == [
        (
            f"Deployment piml/mlflow: image {image} cannot be pulled (ImagePullBackOff: not found); "
            "check the image name and tag, and that the nodes can reach its registry"
        )
    ]
    assert took < SHORT.crds + SHORT.ready + 5  # bounded: the waits, plus the diagnosis
    assert {str(r) for r in error.report.ready} >= {"Deployment piml/redis", "RayCluster piml/ray"}


def test_wrong_architecture(project, plane):
    plane.inject("ray", "exec-format")  # e.g. a Ray image without the -aarch64 suffix on a Pi
    error, _ = failed_deploy(project)
    image = rendered_container(project, "RayCluster", "ray")["image"]
    node = next(p.node for p in project.plan().services if p.component == "ray-head")  # the real scheduler honours it
    (problem,) = error.problems
    assert str(problem).startswith(
        f"RayCluster piml/ray: image {image} is built for another architecture than node {node} (arm64); "
    )


def test_oom_killed(project, plane):
    plane.inject("redis", "oom")
    error, _ = failed_deploy(project)
    limit = rendered_container(project, "Deployment", "redis")["resources"]["limits"]["memory"]
    assert [str(p) for p in error.problems] == [
        (
            f"Deployment piml/redis: container redis was killed for using more than its memory limit {limit}; "
            "raise it in piml.yaml (queue.resources.limits.memory)"
        )
    ]


def test_crash_loop_shows_the_last_log_lines(project, plane):
    log = [f"line {i}" for i in range(1, 31)] + ["Error: dashboard port 8787 already in use"]
    plane.inject("dask-scheduler", "crash", logs=log)
    error, _ = failed_deploy(project)
    (problem,) = error.problems
    text = str(problem)
    assert text.startswith(
        "Deployment piml/dask-scheduler: container scheduler keeps crashing (exit code 1, pod dask-scheduler-"
    )
    shown = [line.removeprefix("    | ") for line in text.splitlines()[1:]]
    assert shown == log[-10:]  # read through the API server from the node, as `kubectl logs --previous`


def test_every_failure_is_reported_together(project, plane):
    plane.inject("mlflow", "image-pull")
    plane.inject("redis", "oom")
    error, _ = failed_deploy(project)
    assert [p.where for p in error.problems] == ["Deployment piml/mlflow", "Deployment piml/redis"]


def test_replicas_failing_alike_are_reported_once(project, plane):
    _, rendered = project.render()
    workers = next(o for r in rendered for o in r.objects if o["metadata"]["name"] == "dask-worker-arm64")
    assert workers["spec"]["replicas"] > 1
    plane.inject("dask-worker-arm64", "image-pull")
    error, _ = failed_deploy(project)
    assert len(error.problems) == 1


def test_pending_for_lack_of_memory_gives_the_numbers(tmp_path, own_plane):
    """Boards smaller than the inventory says: the plan fits, the real scheduler refuses, piml says so, once for
    the replicas that fail alike."""
    small = own_plane("--node-memory", "1Gi")  # the later --node-memory wins
    project = Project(tmp_path / "lab", small)
    try:
        error, _ = failed_deploy(project)
        workers = next(
            o for r in project.render()[1] for o in r.objects if o["metadata"]["name"] == "dask-worker-arm64"
        )
        request = workers["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
        (problem,) = [p for p in error.problems if p.where == "Deployment piml/dask-worker-arm64"]
        text = str(problem)
        assert text.startswith("Deployment piml/dask-worker-arm64: pod dask-worker-arm64-") and "stays Pending" in text
        assert f"it requests {request} of memory and no node has that much free (free: node-1 " in text
        assert "of 924Mi, node-2 " in text  # 1Gi less the kubelet's 100Mi eviction threshold
        assert f"({workers['spec']['replicas'] - 1} more pods alike)" in text
        assert text.endswith("lower its memory request in piml.yaml, switch a component off, or add a node")
    finally:
        purge(project)


SERVING = {"serve": {"enabled": True, "routes": {"iris": {"model": "models:/iris@champion", "max_replicas": 2}}}}


def test_serving_is_waited_for_and_kuberays_words_say_why_not(project, plane):
    """`piml up` waits for the RayService until its routes run, as for the rest. The real KubeRay operator takes it
    up and its pods run, but no Ray Serve answers here: the wait ends at its bound with the operator's state."""
    error, took = failed_deploy(project, SERVING)
    assert [p.where for p in error.problems] == ["RayService piml/piml-serve"], error.problems
    (problem,) = error.problems
    # the route's row and the operator's Ready condition, as KubeRay wrote them
    assert problem.what.startswith(f"not ready after {SHORT.ready:.0f} s (serve: Initializing; KubeRay: "), problem
    assert problem.fix.startswith("see `kubectl -n piml describe rayservice piml-serve`"), problem.fix
    assert took < SHORT.crds + SHORT.ready + 10
    assert {"RayCluster piml/ray", "Deployment piml/mlflow"} <= {str(r) for r in error.report.ready}
