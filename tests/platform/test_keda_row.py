"""`piml check`'s `keda` row, judged by the REAL control plane.

KEDA's operator cannot run here (no image), so its two Deployments run a placeholder the stand-in nodes play; the
real Deployment controller says whether they are available. The external metrics APIService is judged by the real
aggregator in kube-apiserver: with its Service missing it is not Available, in the aggregator's own words, and piml
must pass them on. The row's pass needs an Available APIService; the only kind the aggregator calls Available
without a server to reach is a local one (no `service`), so the pass is shown with that: what it proves is that piml
reads the aggregator's verdict, not that KEDA's metrics server answers.
"""

from __future__ import annotations

import time

import pytest

from piml.health.cluster import KEDA_APISERVICE, KEDA_DEPLOYMENTS, KEDA_NAMESPACE, cluster_checks

APISERVICES = f"/apis/apiregistration.k8s.io/v1/apiservices/{KEDA_APISERVICE}"


def deployment(name: str) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": KEDA_NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": "ghcr.io/kedacore/keda:2.18.1"}]},
            },
        },
    }


def apiservice(service: dict | None) -> dict:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": KEDA_APISERVICE},
        "spec": {
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
            **({"service": service, "insecureSkipTLSVerify": True} if service else {}),
        },
    }


def keda_row(kube, project):
    return next(r for r in cluster_checks(kube, project.cluster()) if r.target == "keda")


def until_row(kube, project, done, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        row = keda_row(kube, project)
        if done(row):
            return row
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s; the row says {row}"
        time.sleep(1)


@pytest.fixture
def keda_gone(plane):
    kube = plane.kube()
    yield kube
    if kube.get(APISERVICES):
        kube.request("DELETE", APISERVICES)
    kube.request("DELETE", f"/api/v1/namespaces/{KEDA_NAMESPACE}")
    kube.close()


def test_the_row_follows_the_deployments_and_the_aggregators_verdict(plane, project, keda_gone):
    kube = keda_gone
    assert "no keda-operator Deployment" in keda_row(kube, project).detail

    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": KEDA_NAMESPACE}})
    for name in KEDA_DEPLOYMENTS:
        kube.request("POST", f"/apis/apps/v1/namespaces/{KEDA_NAMESPACE}/deployments", body=deployment(name))
    # the metrics server's APIService as the chart makes it, its Service not there: the aggregator's words
    service = {"namespace": KEDA_NAMESPACE, "name": "keda-operator-metrics-apiserver", "port": 443}
    kube.request("POST", "/apis/apiregistration.k8s.io/v1/apiservices", body=apiservice(service))
    row = until_row(kube, project, lambda r: "external metrics API" in r.detail, "both Deployments available")
    row = until_row(kube, project, lambda r: "is not present" in r.detail, "the aggregator's verdict")
    assert row.failed and "keda-operator-metrics-apiserver" in row.detail and "logs deploy/" in row.fix, row

    live = kube.get(APISERVICES)
    kube.request("PUT", APISERVICES, body={**apiservice(None), "metadata": live["metadata"]})
    row = until_row(kube, project, lambda r: not r.failed, "Available (local)")
    assert row.detail == "operator and metrics server available", row
