"""The queue runner's manifests: the KEDA ScaledJob valid against its real CRD schema, for Redis and RabbitMQ."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.plan import make_plan
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.render.manifests import canonical_cpu, canonical_memory
from piml.secrets import load_or_create
from tests.crd_schemas import crd_validator

HERE = Path(__file__).resolve().parent


def render(tmp_path, scenario: str, settings: dict):
    path = HERE / "scenarios" / f"{scenario}.yml"
    cluster = Cluster(ProjectPaths(tmp_path, path), load_inventory(path), PimlConfig.model_validate(settings))
    plan = make_plan(cluster)
    secrets = load_or_create(tmp_path / ".piml")
    rendered = {r.component: r.objects for r in render_platform(cluster, plan, secrets)}
    return cluster, plan, secrets, rendered


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
@pytest.mark.parametrize("scenario", ["pi5-3x8gb", "cm4-5x4gb", "single-node"])
def test_scaledjob_valid_and_sized_by_the_plan(tmp_path, scenario, kind):
    cluster, plan, secrets, rendered = render(tmp_path, scenario, {"queue": {"kind": kind, "retries": 2}})
    objects = {o["kind"]: o for o in rendered["runner"]}
    assert set(objects) == {"ConfigMap", "ScaledJob"}
    job = objects["ScaledJob"]
    crd_validator("keda.sh/v1alpha1", "ScaledJob").validate(job)
    kubernetes_validate.validate(objects["ConfigMap"], "1.36.0", strict=True)
    # The JobSpec inside is a real batch/v1 JobSpec.
    kubernetes_validate.validate(
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": job["spec"]["jobTargetRef"]},
        "1.36.0",
        strict=True,
    )
    spec = job["spec"]
    assert spec["maxReplicaCount"] == plan.max_jobs >= 1
    assert spec["scalingStrategy"] == {"strategy": "accurate"} and spec["pollingInterval"] >= 1
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["jobTargetRef"]["backoffLimit"] == 3
    pod = spec["jobTargetRef"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "piml"  # admitted by the broker's NetworkPolicy
    for container in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        runner = plan.runner
        assert container["resources"] == {  # canonical, as Kubernetes writes quantities back
            "requests": {"cpu": canonical_cpu(runner.cpu_request), "memory": canonical_memory(runner.memory_request)},
            "limits": {"cpu": canonical_cpu(runner.cpu_limit), "memory": canonical_memory(runner.memory_limit)},
        }
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    (runner,) = pod["spec"]["containers"]
    assert runner["command"][:4] == ["python", "-m", "piml.runner", "--once"]
    env = {e["name"]: e for e in runner["env"]}
    assert env["PIML_RETRIES"]["value"] == "2"
    assert env["PIML_QUEUE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": kind, "key": "password"}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow", "key": "admin-password"}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == kind
    if kind == "redis":
        assert trigger["metadata"] == {
            "address": f"redis.{cluster.config.namespace}.svc:6379",
            "listName": "piml:queue",
            "listLength": "1",
            "passwordFromEnv": "PIML_QUEUE_PASSWORD",
        }
        assert "PIML_QUEUE_PASSWORD" in env
    else:
        assert trigger["metadata"] == {
            "hostFromEnv": "RABBITMQ_HOST",
            "queueName": "piml.requests",
            "mode": "QueueLength",
            "value": "1",
        }
        assert "$(PIML_QUEUE_PASSWORD)" in env["RABBITMQ_HOST"]["value"]
    # No secret value outside Secrets.
    text = json.dumps(rendered["runner"])
    assert not any(value in text for value in secrets.values())


def test_configmap_carries_the_runner_source_it_mounts(tmp_path):
    _, _, _, rendered = render(tmp_path, "pi5-3x8gb", {})
    objects = {o["kind"]: o for o in rendered["runner"]}
    data = objects["ConfigMap"]["data"]
    volume = next(
        v for v in objects["ScaledJob"]["spec"]["jobTargetRef"]["template"]["spec"]["volumes"] if v["name"] == "source"
    )
    paths = {item["key"]: item["path"] for item in volume["configMap"]["items"]}
    assert set(paths) == set(data)
    assert {"runner/__main__.py", "queue/redis_broker.py", "queue/request.py", "__init__.py"} <= set(paths.values())
    repo = HERE.parents[1] / "piml"
    for key, path in paths.items():
        assert data[key] == (repo / path).read_text()
    assert len(json.dumps(data)) < 900_000  # a ConfigMap holds at most 1 MiB


def test_no_runner_without_the_queue(tmp_path):
    _, _, _, rendered = render(tmp_path, "pi5-3x8gb", {"queue": {"enabled": False}})
    assert "runner" not in rendered


@pytest.mark.parametrize("mlflow", [True, False])
def test_ray_and_dask_pods_log_to_mlflow_with_the_secret(tmp_path, mlflow):
    """Ray jobs (the deep check's training job among them) and Dask tasks find MLflow through their
    environment; the password comes from MLflow's Secret and never appears in a manifest."""
    _, _, secrets, rendered = render(tmp_path, "pi5-3x8gb", {"mlflow": {"enabled": mlflow}})
    ray = next(o for o in rendered["ray"] if o["kind"] == "RayCluster")["spec"]
    pods = [ray["headGroupSpec"]["template"]] + [g["template"] for g in ray["workerGroupSpecs"]]
    pods += [
        o["spec"]["template"]
        for o in rendered["dask"]
        if o["kind"] == "Deployment" and "worker" in o["metadata"]["name"]
    ]
    assert len(pods) >= 3
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}
        if not mlflow:
            assert "MLFLOW_TRACKING_URI" not in env
            continue
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.piml.svc:5000/mlflow"
        assert env["MLFLOW_TRACKING_USERNAME"]["value"] == "admin"
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlflow",
            "key": "admin-password",
        }
    assert secrets["mlflow_admin_password"] not in json.dumps(pods)
