"""piml's readers of live objects take what the real API server writes.

The API server is written in Go, which writes a nil list or map as `null`: a CRD just created answers
`"conditions": null` until the API server's naming and establishing controllers have run, and
`obj.get("conditions", [])` is then None. `piml up --only platform` against this control plane crashed on it
("internal error: TypeError: 'NoneType' object is not iterable") while it waited for the charts' CRDs; the API
stand-in always wrote lists. Here the readers get the real server's answers, and every variant of them with one
list or map written as null.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import pytest

from tests.controlplane.test_control_plane import GO, until

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.io"},
    "spec": {
        "group": "example.io",
        "scope": "Namespaced",
        "names": {"kind": "Gadget", "plural": "gadgets"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "reader", "namespace": "default", "labels": {"app.kubernetes.io/name": "reader"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "reader"}},
        "template": {
            "metadata": {"labels": {"app": "reader"}},
            "spec": {
                "containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"memory": "64Mi"}}}]
            },
        },
    },
}


@pytest.fixture(scope="module")
def kube(bare_plane):
    return bare_plane[1]


def null_paths(obj, path: tuple = ()) -> Iterator[tuple]:
    """The path of every list and map held by a field of `obj`, below its top-level fields (an element of a list
    is never null: Kubernetes' lists hold values, not pointers)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        here = (*path, key)
        if isinstance(value, dict | list):
            if path and isinstance(obj, dict):  # never the top-level fields: `metadata` is always an object
                yield here
            yield from null_paths(value, here)


def nulled(obj: dict, path: tuple) -> dict:
    out = copy.deepcopy(obj)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = None
    return out


def variants(obj: dict) -> Iterator[dict]:
    yield obj
    for path in null_paths(obj):
        yield nulled(obj, path)
    for top in ("status", "spec"):
        if top in obj:
            yield {**obj, top: None}


def test_a_crd_just_created_answers_null_conditions_and_piml_waits_for_it(kube):
    from piml.kube.discovery import Discovery
    from piml.kube.wait import _established, wait_for_kinds

    answer = kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=CRD)
    try:
        # What the real server says (Kubernetes v1.36.3); if this changes upstream, the test says so.
        assert answer["status"]["conditions"] is None
        assert _established(answer) is False
        # And the wait itself, from the moment the CRD exists (the chart just created it).
        problems = wait_for_kinds(
            kube, Discovery(kube), {("example.io/v1", "Gadget")}, until=_in(20), poll=0.05, charts={"gadgets"}
        )
        # example.io has no chart: not waited for, one plain problem at once.
        assert [p.what for p in problems] == [
            "this cluster does not serve this kind and nothing piml applies brings it"
        ]
    finally:
        kube.request("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.io")


def test_wait_for_kinds_on_a_crd_that_a_chart_brings(kube, monkeypatch):
    """The real path: the CRD is created while piml polls; `conditions: null` may be what the first poll sees."""
    import threading

    from piml.kube import wait
    from piml.kube.discovery import Discovery

    monkeypatch.setitem(wait.CHART_FOR_GROUP, "example.io", "gadgets")
    timer = threading.Timer(
        0.2, lambda: kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=CRD)
    )
    timer.start()
    try:
        problems = wait.wait_for_kinds(
            kube, Discovery(kube), {("example.io/v1", "Gadget")}, until=_in(30), poll=0.01, charts={"gadgets"}
        )
        assert problems == []
    finally:
        timer.join()
        until(
            "the CRD deleted",
            lambda: (
                kube.request("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.io")
                is not None
            ),
            10,
        )


def test_every_reader_takes_any_list_or_map_written_as_null(kube):
    from piml.kube.diagnose import _pod, _requested_memory, pod_selector, progress_text
    from piml.kube.status import component_row, node_row
    from piml.kube.wait import _established, readiness

    kube.request("POST", "/apis/apps/v1/namespaces/default/deployments", body=DEPLOYMENT)
    pods = until(
        "the reader's pod Running",
        lambda: [
            p
            for p in kube.request("GET", "/api/v1/namespaces/default/pods", {"labelSelector": "app=reader"})["items"]
            if (p.get("status") or {}).get("phase") == "Running"
        ],
        60,
    )
    until(
        "the Deployment available",
        lambda: readiness(kube.request("GET", "/apis/apps/v1/namespaces/default/deployments/reader"))[0],
        60,
    )
    deployment = kube.request("GET", "/apis/apps/v1/namespaces/default/deployments/reader")
    node = kube.request("GET", "/api/v1/nodes")["items"][0]
    crd = kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=CRD)
    try:
        checked = 0
        for variant in variants(node):
            node_row(variant)
            checked += 1
        for variant in variants(deployment):
            readiness(variant), component_row(variant), pod_selector(variant), progress_text(variant)
            checked += 1
        for variant in variants(pods[0]):
            _pod(kube, variant, "Deployment default/reader")
            _requested_memory(variant.get("spec") or {})
            checked += 1
        for variant in variants(crd):
            _established(variant)
            checked += 1
        assert checked > 100  # the real objects have many lists and maps
    finally:
        kube.request("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.io")
        kube.request("DELETE", "/apis/apps/v1/namespaces/default/deployments/reader")


def _in(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


@pytest.mark.timeout(240)
def test_a_scheduled_run_that_failed_is_read_from_the_real_cronjob_controller(kube):
    """The scheduled backup's row (piml status, piml check) from what the real cronjob and job controllers write:
    running while its Job is active; once the Job failed, not ready, saying so. The pod's end is reported as a
    kubelet reports it (the stand-in node leaves Job pods Running)."""
    from piml.kube.status import scheduled_runs

    ns, name = "default", "nightly"
    pod_spec = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}},
        },
    }
    path = f"/apis/batch/v1/namespaces/{ns}/cronjobs"
    kube.request("POST", path, body=cronjob)
    try:
        assert scheduled_runs(kube.get(f"{path}/{name}")) == {"ready": True, "state": "not run yet (* * * * *)"}

        def running_pod():
            pods = kube.request("GET", f"/api/v1/namespaces/{ns}/pods").get("items") or []
            return next((p for p in pods if p["metadata"]["name"].startswith(name) and
                         (p.get("status") or {}).get("phase") == "Running"), None)  # fmt: skip

        pod = until("the cronjob controller's first Job has a running pod", running_pod, 90)
        live = until("the CronJob lists its active Job", lambda: (kube.get(f"{path}/{name}").get("status") or {})
                     .get("active") and kube.get(f"{path}/{name}"), 30)  # fmt: skip
        assert scheduled_runs(live)["ready"] and scheduled_runs(live)["state"].startswith("running since ")

        ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": 1, "reason": "Error", "startedAt": ended, "finishedAt": ended}
        kube.request(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/status",
            body={"status": {"phase": "Failed", "containerStatuses": [
                {"name": "c", "image": "busybox:1.36", "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": terminated}}]}},
            content_type="application/merge-patch+json",
        )  # fmt: skip

        def recorded():
            live = kube.get(f"{path}/{name}")
            return live if not (live.get("status") or {}).get("active") else None

        live = until("the CronJob records that its Job ended", recorded, 45)
        row = scheduled_runs(live)
        scheduled = live["status"]["lastScheduleTime"]
        assert row == {"ready": False, "state": f"the run of {scheduled} failed; none succeeded yet"}, live["status"]
        for variant in variants(live):  # and whatever the server writes as null
            scheduled_runs(variant)
    finally:
        kube.request("DELETE", f"{path}/{name}", {"propagationPolicy": "Background"})
