"""`piml status` / `piml check` rows for online serving, read off a RayService's status as KubeRay 1.6/1.7 writes
it (apis/ray/v1/rayservice_types.go: conditions, activeServiceStatus.applicationStatuses.<app>.{status, message,
serveDeploymentStatuses.<deployment>.{status, message}}). The control plane's real KubeRay writes the first of
these (Initializing): tests/controlplane/test_rendered_objects.py."""

from __future__ import annotations

from piml.kube.status import route_rows, workload_rows


def service(conditions=(), apps=None) -> dict:
    status: dict = {"conditions": [dict(c) for c in conditions]}
    if apps is not None:
        status["activeServiceStatus"] = {"rayClusterName": "piml-serve-abcde", "applicationStatuses": apps}
    return {"kind": "RayService", "metadata": {"name": "piml-serve", "namespace": "piml"}, "status": status}


READY = {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}


def test_before_any_application_one_row_with_the_reason():
    (row,) = route_rows(service([{"type": "Ready", "status": "False", "reason": "Initializing"}]))
    assert (row["component"], row["ready"], row["state"]) == ("serve", False, "Initializing")
    (row,) = workload_rows({"kind": "RayService", "metadata": {"name": "piml-serve"}})  # no status at all yet
    assert (row["ready"], row["state"]) == (False, "pending")


def test_a_row_per_route_with_its_replicas_state():
    apps = {
        "wine": {"status": "DEPLOYING", "serveDeploymentStatuses": {"model": {"status": "UPDATING"}}},
        "iris": {"status": "RUNNING", "serveDeploymentStatuses": {"model": {"status": "UPSCALING"}}},
    }
    rows = route_rows(service([READY], apps))
    assert [(r["component"], r["ready"], r["state"]) for r in rows] == [
        ("serve/iris", True, "RUNNING, replicas UPSCALING"),  # Ray 2.60's states beyond KubeRay's enum are fine
        ("serve/wine", False, "DEPLOYING, replicas UPDATING"),
    ]


def test_a_failed_route_says_the_last_line_of_why():
    message = "Traceback (most recent call last):\n  ...\nMlflowException: Registered Model with name=iris not found"
    apps = {"iris": {"status": "DEPLOY_FAILED", "message": message}}
    (row,) = route_rows(service([READY], apps))
    assert not row["ready"]
    assert row["state"] == "DEPLOY_FAILED: MlflowException: Registered Model with name=iris not found"


def test_running_but_no_endpoint_is_not_ready():
    apps = {"iris": {"status": "RUNNING", "serveDeploymentStatuses": {"model": {"status": "HEALTHY"}}}}
    (row,) = route_rows(service([{"type": "Ready", "status": "False", "reason": "ZeroServeEndpoints"}], apps))
    assert not row["ready"]


def test_piml_up_waits_until_every_route_runs():
    from piml.kube.wait import WAITED_KINDS, readiness

    assert "RayService" in WAITED_KINDS
    running = {"status": "RUNNING", "serveDeploymentStatuses": {"model": {"status": "HEALTHY"}}}
    deploying = {"status": "DEPLOYING", "serveDeploymentStatuses": {"model": {"status": "UPDATING"}}}
    assert readiness(service([READY], {"iris": running, "wine": running})) == (
        True,
        "serve/iris: RUNNING, replicas HEALTHY; serve/wine: RUNNING, replicas HEALTHY",
    )
    assert readiness(service([READY], {"iris": running, "wine": deploying}))[0] is False
    assert readiness(service([{"type": "Ready", "status": "False", "reason": "Initializing"}])) == (
        False,
        "serve: Initializing",
    )
