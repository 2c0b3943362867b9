"""Online serving's manifests (#12), each checked by the program that will read it: the RayService against
KubeRay's own CRD schema (the operator module's config/crd/bases), its serveConfigV2 by Ray Serve's own schema
(the pinned Ray, in test_serve_by_ray.py), its worker groups by the Ray autoscaler's own reading of a KubeRay group
spec (there too), and the code ConfigMap against the files the pods import."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.plan import make_plan
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.render.source import PACKAGE
from piml.secrets import load_or_create
from piml.serve import apps
from tests.crd_schemas import crd_validator

HERE = Path(__file__).resolve().parent
SERVING = {
    "serve": {
        "enabled": True,
        "routes": {
            "iris": {"model": "models:/iris@champion", "max_replicas": 3, "batch_size": 16},
            "wine": {"model": "models:/wine/2", "min_replicas": 0, "max_replicas": 1, "cpu": "1", "memory": "768Mi"},
        },
    }
}


def render(tmp_path, scenario: str = "pi5-3x8gb", settings: dict | None = None, with_secrets: bool = True):
    path = HERE / "scenarios" / f"{scenario}.yml"
    config = PimlConfig.model_validate(SERVING if settings is None else settings)
    cluster = Cluster(ProjectPaths(tmp_path, path), load_inventory(path), config)
    plan = make_plan(cluster)
    secrets = load_or_create(tmp_path / ".piml") if with_secrets else None
    rendered = {r.component: r.objects for r in render_platform(cluster, plan, secrets)}
    return plan, secrets, rendered


def serving_objects(rendered) -> dict[str, dict]:
    return {o["kind"]: o for o in rendered["serve"]}


@pytest.mark.parametrize("scenario", ["pi5-3x8gb", "cm4-5x4gb", "amd64-server-arm64-agents"])
def test_rayservice_is_valid_against_kuberays_crd(tmp_path, scenario):
    _, _, rendered = render(tmp_path, scenario)
    objects = serving_objects(rendered)
    assert set(objects) == {"ConfigMap", "Secret", "RayService"}
    crd_validator("ray.io/v1", "RayService").validate(objects["RayService"])
    for kind in ("ConfigMap", "Secret"):
        kubernetes_validate.validate(objects[kind], "1.36.0", strict=True)


def test_serve_config_text_is_plain_yaml(tmp_path):
    """No anchors or aliases (a dict shared by two applications dumps as &id001 / *id001): the text is read by
    KubeRay's Go YAML and shown to users in `kubectl get rayservice -o yaml`."""
    _, _, rendered = render(tmp_path)
    text = serving_objects(rendered)["RayService"]["spec"]["serveConfigV2"]
    assert "&id0" not in text and "*id0" not in text, text


def test_code_configmap_carries_what_the_pods_import(tmp_path):
    _, _, rendered = render(tmp_path)
    objects = serving_objects(rendered)
    data = objects["ConfigMap"]["data"]
    assert {k: v for k, v in data.items()} == {
        "piml." + f.replace("/", "."): (PACKAGE / f).read_text() for f in apps.FILES
    }
    cluster = objects["RayService"]["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (volume,) = pod["spec"]["volumes"]
        assert {i["path"] for i in volume["configMap"]["items"]} == set(apps.FILES)
        container = pod["spec"]["containers"][0]
        assert container["volumeMounts"] == [{"name": "source", "mountPath": "/app/piml", "readOnly": True}]
        env = {e["name"]: e for e in container["env"]}
        assert env["PYTHONPATH"]["value"] == "/app"
        assert {n: env[n]["value"] for n in apps.POD_ENV} == {
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
        }
        assert env["PIML_SERVE_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "piml-serve", "key": "token"}}
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow"
        assert {"name": "serve", "containerPort": apps.SERVE_PORT} in container["ports"]


def test_every_shipped_module_imports_only_what_is_shipped():
    """The pods have piml's shipped files and the Ray image's packages, nothing else of piml."""
    import ast

    shipped = {"piml." + f.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for f in apps.FILES}
    shipped.add("piml")
    for name in apps.FILES:
        tree = ast.parse((PACKAGE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("piml"):
                assert node.module in shipped, f"{name} imports {node.module}, which is not shipped"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("piml") or alias.name in shipped, f"{name}: {alias.name}"


def test_a_code_change_changes_the_serve_config_and_nothing_else(tmp_path):
    config = PimlConfig.model_validate(SERVING)
    before, after = apps.serve_config(config, "aaaa"), apps.serve_config(config, "bbbb")
    assert before != after
    for a, b in zip(before["applications"], after["applications"], strict=True):
        assert a["runtime_env"]["env_vars"] == {"PIML_CODE_HASH": "aaaa"}
        b["runtime_env"]["env_vars"]["PIML_CODE_HASH"] = "aaaa"
    assert before == after


def test_the_reload_token_is_a_secret_of_its_own(tmp_path):
    _, secrets, rendered = render(tmp_path)
    secret = serving_objects(rendered)["Secret"]
    assert secret["stringData"] == {"token": secrets["serve_token"]}
    assert len(secrets["serve_token"]) >= 32
    _, _, without = render(tmp_path, with_secrets=False)
    assert "stringData" not in serving_objects(without)["Secret"]
    assert secrets["serve_token"] not in repr(without)


def test_no_serving_by_default(tmp_path):
    plan, _, rendered = render(tmp_path, settings={})
    assert "serve" not in rendered and plan.serve_workers == ()
    assert plan.placement("serve-head") is None


def test_replicas_pip_install_what_loads_the_model_unless_told(tmp_path):
    config = PimlConfig.model_validate(SERVING)
    (app, *_) = apps.applications(config)
    assert app["runtime_env"]["pip"][0] == f"mlflow-skinny=={config.mlflow.version}"
    told = PimlConfig.model_validate({"serve": {**SERVING["serve"], "pip": []}})
    assert all("pip" not in a["runtime_env"] for a in apps.applications(told))
