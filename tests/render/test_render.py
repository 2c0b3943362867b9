"""Rendered manifests, per scenario: valid against the real schemas, and following piml's policies."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from piml.config import PimlConfig
from piml.errors import InputError
from piml.inventory import load_inventory
from piml.plan import make_plan
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.crd_schemas import CRDS, crd_validator
from tests.podspecs import pod_specs

HERE = Path(__file__).resolve().parent
K8S_VERSION = "1.36.0"  # the pinned k3s is v1.36.3
NO_SCHEMA_HERE = {("traefik.io/v1alpha1", "Middleware")}  # k3s's Traefik CRD; its schema is not in shared/
FITTING = ["pi5-3x8gb", "cm4-5x4gb", "amd64-server-arm64-agents", "single-node"]
CONFIGS = {
    "defaults": {},
    "postgres-minio-rabbitmq": {
        "mlflow": {"backend": "postgresql", "artifacts": "minio"},
        "queue": {"kind": "rabbitmq"},
        "ray": {"gcs_fault_tolerance": True},
    },
}


def cluster_for(scenario: str, tmp_path: Path, settings: dict) -> Cluster:
    path = HERE / "scenarios" / f"{scenario}.yml"
    paths = ProjectPaths(tmp_path, path)
    return Cluster(paths, load_inventory(path), PimlConfig.model_validate(settings))


def all_objects(cluster, plan, secrets=None):
    return [obj for rendered in render_platform(cluster, plan, secrets) for obj in rendered.objects]


@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("scenario", FITTING)
def test_valid_against_real_schemas(scenario, settings, tmp_path):
    cluster = cluster_for(scenario, tmp_path, settings)
    objects = all_objects(cluster, make_plan(cluster), load_or_create(tmp_path / ".piml"))
    kinds = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        kinds.add(key)
        if key in CRDS:
            crd_validator(*key).validate(obj)
        elif key not in NO_SCHEMA_HERE:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert ("ray.io/v1", "RayCluster") in kinds and ("helm.cattle.io/v1", "HelmChart") in kinds


@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("scenario", FITTING)
def test_policies(scenario, settings, tmp_path):
    cluster = cluster_for(scenario, tmp_path, settings)
    plan = make_plan(cluster)
    secrets = load_or_create(tmp_path / ".piml")
    objects = all_objects(cluster, plan, secrets)
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "piml", obj["metadata"]
        for spec in pod_specs(obj):
            arch = spec.get("nodeSelector", {}).get("kubernetes.io/arch")
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                name = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
                res = container.get("resources", {})
                assert {"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(
                    res.get("limits", {})
                ), name
                image = container["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), name
                if image.startswith("rayproject/ray:"):  # Ray has no multi-arch images
                    assert arch in ("arm64", "amd64"), f"{name}: a Ray pod must be pinned to an architecture"
                    assert image.endswith("-aarch64") == (arch == "arm64"), f"{name}: {image} on {arch}"
    # No secret value anywhere but in a Secret.
    outside = json.dumps([o for o in objects if o["kind"] != "Secret"])
    for name, value in secrets.items():
        assert value not in outside, name
    # Only platform pods reach the data stores.
    policies = {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"}
    stores = {"redis", "rabbitmq", "mlflow-postgres", "mlflow-minio"} & {
        o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"
    }
    assert stores and stores <= policies
    # Every placed service sits on a node of the plan, and the plan's requests fit every node.
    for node in plan.nodes:
        cpu, memory = plan.used(node.name)
        assert cpu <= node.cpu and memory <= node.memory, node.name


def test_secret_values_stay_out_of_files_unless_asked(tmp_path):
    cluster = cluster_for("pi5-3x8gb", tmp_path, {})
    plan = make_plan(cluster)
    secrets = load_or_create(tmp_path / ".piml")
    text = "".join(r.text() for r in render_platform(cluster, plan, None))
    assert not any(value in text for value in secrets.values())
    assert "stringData" not in text and "left out of rendered files" in text


def test_ray_ports_are_never_exposed(tmp_path):
    cluster = cluster_for("pi5-3x8gb", tmp_path, {})
    objects = all_objects(cluster, make_plan(cluster))
    ray = next(o for o in objects if o["kind"] == "RayCluster")
    assert ray["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    ports = {
        p["backend"]["service"]["port"]["number"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]
    }
    assert ports == {5000, 8787, 8265}  # MLflow and the two dashboards: never GCS 6379 or client 10001
    assert not any(o["kind"] == "Service" and o["spec"].get("type") in ("NodePort", "LoadBalancer") for o in objects)


def test_mixed_architectures_get_a_pool_each(tmp_path):
    cluster = cluster_for("amd64-server-arm64-agents", tmp_path, {})
    plan = make_plan(cluster)
    assert {w.arch for w in plan.ray_workers} == {"amd64", "arm64"}
    assert {w.arch for w in plan.dask_workers} == {"amd64", "arm64"}
    assert {p.node for p in plan.services} == {"nuc"}  # labelled piml.io/services: "true"
    assert "macmini" not in {n.name for n in plan.nodes}  # outside Kubernetes


def test_default_platform_budget(tmp_path):
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path, {}))
    assert plan.services_memory <= 3 * 1024
    assert plan.workload_share >= 0.6


def test_cannot_fit_names_node_and_shortfall(tmp_path):
    cluster = cluster_for("cannot-fit", tmp_path, {})
    with pytest.raises(InputError) as info:
        make_plan(cluster)
    text = str(info.value)
    assert "does not fit" in text and "tiny" in text and "short by" in text and "enabled: false" in text


def test_sizes_can_be_overridden(tmp_path):
    plan = make_plan(
        cluster_for(
            "pi5-3x8gb", tmp_path, {"mlflow": {"resources": {"limits": {"memory": "3Gi"}, "requests": {"cpu": "1"}}}}
        )
    )
    mlflow = plan.placement("mlflow")
    assert (mlflow.size.memory_limit, mlflow.size.cpu_request) == (3072, 1000)


def test_unknown_memory_is_a_clear_error(tmp_path, write):
    path = write(
        "hosts.yml", "k3s_cluster:\n  children:\n    server:\n      hosts:\n        x: {ansible_host: 10.9.9.9}\n"
    )
    cluster = Cluster(ProjectPaths(tmp_path, path), load_inventory(path), PimlConfig())
    with pytest.raises(InputError, match="cannot size node 'x'"):
        make_plan(cluster)


def test_the_head_s_gcs_is_opened_to_the_ray_external_hosts_only(tmp_path):
    cluster = cluster_for("amd64-server-arm64-agents", tmp_path, {"ray": {"external": {"gcs_node_port": 31000}}})
    objects = {(o["kind"], o["metadata"]["name"]): o for o in all_objects(cluster, make_plan(cluster))}
    service = objects[("Service", "ray-head-external")]["spec"]
    assert service["type"] == "NodePort" and service["externalTrafficPolicy"] == "Local"  # the host's address kept
    assert service["selector"] == {"ray.io/cluster": "ray", "ray.io/node-type": "head"}
    assert service["ports"] == [{"name": "gcs", "port": 6379, "targetPort": 6379, "nodePort": 31000, "protocol": "TCP"}]
    unset = cluster_for("amd64-server-arm64-agents", tmp_path, {})  # Kubernetes allocates it: no two projects collide
    (port,) = next(o for o in all_objects(unset, make_plan(unset)) if o["metadata"]["name"] == "ray-head-external")[
        "spec"
    ]["ports"]
    assert "nodePort" not in port
    policy = objects[("NetworkPolicy", "ray-external")]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"ray.io/cluster": "ray"}}
    assert policy["ingress"] == [
        {"from": [{"namespaceSelector": {}}]},
        {"from": [{"ipBlock": {"cidr": "10.0.2.50/32"}}]},
    ]

    single = cluster_for("single-node", tmp_path, {})  # no ray_external host: nothing opened
    assert not {("Service", "ray-head-external"), ("NetworkPolicy", "ray-external")} & {
        (o["kind"], o["metadata"]["name"]) for o in all_objects(single, make_plan(single))
    }


def test_mlflow_s_sqlite_store_is_migrated_before_its_server_starts(tmp_path):
    """`mlflow server` migrates an older store only when a table is missing and refuses it otherwise
    (docs/day2-design.md): an init container runs `mlflow db upgrade` on the volume first. Not for PostgreSQL."""
    for settings, wanted in (({}, True), ({"mlflow": {"backend": "postgresql"}}, False)):
        cluster = cluster_for("pi5-3x8gb", tmp_path, settings)
        objects = all_objects(cluster, make_plan(cluster))
        mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
        inits = {c["name"]: c for c in mlflow["spec"]["template"]["spec"]["initContainers"]}
        assert ("db-upgrade" in inits) == wanted
        if wanted:
            assert list(inits) == ["extra-packages", "db-upgrade"]
            assert inits["db-upgrade"]["command"] == ["mlflow", "db", "upgrade", "sqlite:////mlflow/mlflow.db"]
            assert inits["db-upgrade"]["image"] == mlflow["spec"]["template"]["spec"]["containers"][0]["image"]
            assert {"name": "data", "mountPath": "/mlflow"} in inits["db-upgrade"]["volumeMounts"]
