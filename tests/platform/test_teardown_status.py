"""Teardown (data kept unless purge), status, and no secret in any output."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from piml.kube.deploy import DeployError, deploy
from piml.kube.status import cluster_status
from piml.kube.teardown import teardown_platform
from tests.platform.conftest import FAST, SHORT


def project_objects(api) -> set[tuple[str, str, str]]:
    return {key for key, obj in api.objects.items()
            if obj["metadata"].get("labels", {}).get("piml.io/project") == "lab" and key[0] != "pods"}


def test_teardown_keeps_the_volumes(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    lines = []
    report = teardown_platform(cluster, project.kubeconfig, timeout=5, poll=0.05, progress=lines.append)
    assert {str(r) for r in report.kept} == {"PersistentVolumeClaim piml/mlflow-data", "PersistentVolumeClaim piml/redis-data",
                                             "Namespace piml"}
    assert project_objects(kubeapi) == {("persistentvolumeclaims", "piml", "mlflow-data"),
                                        ("persistentvolumeclaims", "piml", "redis-data"), ("namespaces", "", "piml")}
    assert not kubeapi.names("pods", "piml") and not kubeapi.names("helmcharts")
    deletes = [h[1] for h in kubeapi.history if h[0] == "delete"]
    assert deletes.index("RayCluster") < deletes.index("Deployment") < deletes.index("HelmChart")
    assert len(lines) == len(report.deleted) and not report.still_going

    # Up again: the volumes are still there, the rest comes back.
    again = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert again.unchanged == 3 and again.created == len(again.applied) - 3  # namespace and the two claims


def test_purge_deletes_the_data(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    report = teardown_platform(cluster, project.kubeconfig, purge=True, timeout=5, poll=0.05)
    assert not report.kept and not project_objects(kubeapi)
    assert {"PersistentVolumeClaim piml/redis-data", "Namespace piml"} <= {str(r) for r in report.deleted}
    assert report.as_dict()["purge"] is True
    # Nothing left: a second teardown has nothing to do.
    assert not teardown_platform(cluster, project.kubeconfig, purge=True, timeout=5, poll=0.05).deleted


def test_status_reads_nodes_and_components(project, kubeapi):
    kubeapi.add_node("pi4", memory="4Gi", pressure=("MemoryPressure",))
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    status = cluster_status(cluster, project.kubeconfig)
    json.dumps(status)  # --json ready
    assert status["reachable"] and status["version"] == "v1.36.3+k3s1"
    nodes = {n["name"]: n for n in status["nodes"]}
    assert set(nodes) == {"pi1", "pi2", "pi3", "pi4"}
    assert nodes["pi1"]["ready"] and nodes["pi1"]["pressure"] == [] and nodes["pi1"]["kubelet"] == "v1.36.3+k3s1"
    assert nodes["pi4"]["pressure"] == ["MemoryPressure"] and not status["healthy"]
    components = {(c["kind"], c["name"]): c for c in status["components"]}
    assert components["Deployment", "mlflow"]["ready_replicas"] == components["Deployment", "mlflow"]["replicas"] == 1
    assert components["RayCluster", "ray"]["state"] == "ready"
    assert components["HelmChart", "kuberay-operator"]["chart"] == "kuberay-operator 1.7.0"
    assert {v["name"] for v in status["volumes"]} == {"mlflow-data", "redis-data"}
    assert status["urls"] == {"mlflow": "http://10.0.0.1/mlflow/", "ray dashboard": "http://10.0.0.1/ray/",
                              "dask dashboard": "http://10.0.0.1/dask/status"}


def test_status_shows_what_is_not_ready(project, kubeapi):
    kubeapi.inject("redis", "oom")
    cluster, rendered = project.render()
    with pytest.raises(DeployError):
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    status = cluster_status(cluster, project.kubeconfig)
    redis = next(c for c in status["components"] if c["name"] == "redis" and c["kind"] == "Deployment")
    assert redis["ready"] is False and redis["ready_replicas"] == 0 and not status["healthy"]


def test_status_of_an_unreachable_cluster(project, kubeapi):
    cluster, _ = project.render()
    kubeapi.stop()
    status = cluster_status(cluster, project.kubeconfig, request_timeout=2)
    assert status["reachable"] is False and "cannot reach the Kubernetes API" in status["error"]


def test_no_secret_in_any_output(project, kubeapi, caplog):
    caplog.set_level(logging.DEBUG)
    kubeapi.inject("dask-scheduler", "crash", logs=["starting", "boom"])
    cluster, rendered = project.render()
    lines: list[str] = []
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT, progress=lines.append)
    teardown = teardown_platform(cluster, project.kubeconfig, purge=True, timeout=5, poll=0.05, progress=lines.append)
    said = "\n".join([*lines, str(caught.value), json.dumps(caught.value.report.as_dict()), json.dumps(teardown.as_dict()),
                      json.dumps(cluster_status(cluster, project.kubeconfig)), caplog.text])
    assert "Secret piml/redis" in said  # objects are named ...
    for name, value in project.secrets.items():  # ... their values never, not even base64-encoded
        assert value not in said and base64.b64encode(value.encode()).decode() not in said, name
