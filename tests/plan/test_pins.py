"""Stateful services stay on the node their local-path volume is on: the plan never moves one silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from piml.config import PimlConfig
from piml.errors import EXIT_USAGE, InputError
from piml.inventory import load_inventory
from piml.kube.volumes import claim_nodes, volume_node
from piml.plan import make_plan
from piml.plan.pins import VOLUMES, Pin, pins_from_claims
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform

TWO = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {ansible_host: 10.0.0.1}
    agent:
      hosts:
        pi2: {ansible_host: 10.0.0.2}
  vars: {piml_model: pi5, piml_memory_gb: 8}
"""
THREE = TWO.replace(
    "        pi2: {ansible_host: 10.0.0.2}\n",
    "        pi2: {ansible_host: 10.0.0.2}\n        pi3: {ansible_host: 10.0.0.3}\n",
)
STORES = {
    "mlflow": {"backend": "postgresql", "artifacts": "minio"},
    "queue": {"kind": "rabbitmq"},
    "ray": {"gcs_fault_tolerance": True},
}


def cluster(tmp_path: Path, inventory: str, settings: dict | None = None) -> Cluster:
    path = tmp_path / f"hosts-{abs(hash(inventory))}.yml"
    path.write_text(inventory)
    return Cluster(ProjectPaths(tmp_path, path), load_inventory(path), PimlConfig.model_validate(settings or {}))


def where(plan) -> dict[str, str]:
    return {p.component: p.node for p in plan.services}


@pytest.mark.parametrize("settings", [{}, STORES], ids=["defaults", "every-store"])
def test_adding_a_node_moves_no_stateful_service(tmp_path, settings):
    before = where(make_plan(cluster(tmp_path, TWO, settings)))
    unpinned = where(make_plan(cluster(tmp_path, THREE, settings)))
    stateful = [c for c in VOLUMES if c in before]
    assert any(before[c] != unpinned[c] for c in stateful)  # what issue 10 saw: the roomier new node draws them
    pins = pins_from_claims({VOLUMES[c]: before[c] for c in stateful})
    plan = make_plan(cluster(tmp_path, THREE, settings), pins=pins)
    after = where(plan)
    assert {c: after[c] for c in stateful} == {c: before[c] for c in stateful}
    assert {p.component: p.pinned_by for p in plan.services if p.pinned_by} == {c: VOLUMES[c] for c in stateful}
    assert set(plan.pins) == set(pins.values())
    data = plan.as_dict()
    assert {s["component"]: s.get("pinned_by") for s in data["services"] if s.get("pinned_by")} == {
        c: VOLUMES[c] for c in stateful
    }


def test_a_pin_to_a_node_that_is_gone_is_exit_2_with_the_fix(tmp_path):
    with pytest.raises(InputError) as caught:
        make_plan(cluster(tmp_path, TWO), pins={"redis": Pin("redis", "pi3", "redis-data")})
    assert caught.value.exit_code == EXIT_USAGE == 2
    text = str(caught.value)
    assert text.startswith("PersistentVolumeClaim piml/redis-data: redis's data is on node pi3")
    assert "not in the inventory" in text and "put pi3 back in the inventory" in text
    assert "kubectl -n piml delete pvc redis-data" in text


def test_a_pin_to_a_node_without_room_is_exit_2_naming_the_shortfall(tmp_path):
    big = {
        "mlflow": {"resources": {"requests": {"memory": "6900Mi"}}}
    }  # fits the agent, not the server (it keeps more)
    assert where(make_plan(cluster(tmp_path, TWO, big)))["mlflow"] == "pi2"
    with pytest.raises(InputError) as caught:
        make_plan(cluster(tmp_path, TWO, big), pins={"mlflow": Pin("mlflow", "pi1", "mlflow-data")})
    assert caught.value.exit_code == 2
    text = str(caught.value)
    assert "mlflow must stay on pi1, where its volume mlflow-data is, but pi1 is short by" in text
    assert "kubectl -n piml delete pvc mlflow-data" in text and "does not fit" not in text


def test_pins_for_services_switched_off_are_ignored(tmp_path):
    plan = make_plan(
        cluster(tmp_path, TWO, {"queue": {"enabled": False}}), pins={"redis": Pin("redis", "pi9", "redis-data")}
    )
    assert plan.placement("redis") is None and not plan.pins


def test_pinned_services_still_count_against_their_node(tmp_path):
    plan = make_plan(
        cluster(tmp_path, THREE),
        pins={"mlflow": Pin("mlflow", "pi1", "mlflow-data"), "redis": Pin("redis", "pi1", "redis-data")},
    )
    for node in plan.nodes:
        cpu, memory = plan.used(node.name)
        assert cpu <= node.cpu and memory <= node.memory
    assert where(plan)["mlflow"] == where(plan)["redis"] == "pi1"


@pytest.mark.parametrize("settings", [{}, STORES], ids=["defaults", "every-store"])
def test_each_claim_belongs_to_the_service_it_pins(tmp_path, settings):
    """VOLUMES names the claims the templates render, and the Deployment mounting each sits where the plan says."""
    c = cluster(tmp_path, THREE, settings)
    plan = make_plan(c, pins={name: Pin(name, "pi2", claim) for name, claim in VOLUMES.items()})
    objects = [o for r in render_platform(c, plan) for o in r.objects]
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert claims and claims <= set(VOLUMES.values())
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        spec = obj["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                component = next(
                    name for name, claim in VOLUMES.items() if claim == volume["persistentVolumeClaim"]["claimName"]
                )
                assert spec["nodeSelector"]["kubernetes.io/hostname"] == plan.placement(component).node == "pi2"


# -- reading the cluster: which node each claim's volume is on -----------------------------------------------------


class FakeKube:
    def __init__(self, claims, volumes):
        self.lists = {"/api/v1/namespaces/piml/persistentvolumeclaims": claims, "/api/v1/persistentvolumes": volumes}
        self.paths = []

    def request(self, method, path, query=None, **_):
        self.paths.append((method, path))
        return {"items": self.lists[path]}


def claim(name, uid, annotations=None):
    return {"metadata": {"name": name, "namespace": "piml", "uid": uid, "annotations": annotations or {}}}


def local_pv(name, claim_name, uid, node, namespace="piml"):
    return {
        "metadata": {"name": name},
        "spec": {
            "claimRef": {"namespace": namespace, "name": claim_name, "uid": uid},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


def test_claim_nodes_reads_local_path_volumes():
    kube = FakeKube(
        claims=[
            claim("redis-data", "u1"),
            claim("mlflow-data", "u2"),
            claim("rabbitmq-data", "u3", {"volume.kubernetes.io/selected-node": "pi3"}),
            claim("mlflow-minio-data", "u4"),
            claim("mlflow-postgres-data", "u5"),
        ],
        volumes=[
            local_pv("pvc-u1", "redis-data", "u1", "pi2"),
            local_pv("pvc-old", "mlflow-data", "u0", "pi9"),  # left from a deleted claim of the same name
            local_pv("pvc-u2", "mlflow-data", "u2", "pi1"),
            local_pv("pvc-other", "redis-data", "x", "pi7", namespace="elsewhere"),
            {
                "metadata": {"name": "nfs"},
                "spec": {"claimRef": {"namespace": "piml", "name": "mlflow-minio-data", "uid": "u4"}, "nfs": {}},
            },
        ],
    )
    assert claim_nodes(kube, "piml") == {"redis-data": "pi2", "mlflow-data": "pi1", "rabbitmq-data": "pi3"}
    assert kube.paths == [
        ("GET", "/api/v1/namespaces/piml/persistentvolumeclaims"),
        ("GET", "/api/v1/persistentvolumes"),
    ]
    assert pins_from_claims(claim_nodes(kube, "piml"))["redis"] == Pin("redis", "pi2", "redis-data")


def test_no_claims_no_second_request():
    kube = FakeKube(claims=[], volumes=[local_pv("pvc-u1", "redis-data", "u1", "pi2")])
    assert claim_nodes(kube, "piml") == {} and len(kube.paths) == 1


def test_volume_node_wants_exactly_one_node():
    pv = local_pv("a", "c", "u", "pi1")
    assert volume_node(pv) == "pi1"
    pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = ["pi1", "pi2"]
    assert volume_node(pv) is None
    assert volume_node({"spec": {}}) is None
