"""The rendered serving objects read by Ray's own code at the pinned version: serveConfigV2 by Ray Serve's schema
(what the dashboard's PUT /api/serve/applications/ validates), the worker groups by the autoscaler's reading of a
KubeRay group spec. Needs ray, so the fast loop's light venv does not collect it (tests/conftest.py HEAVY)."""

from __future__ import annotations

import yaml

from piml.serve import apps
from tests.render.test_serve import render, serving_objects


def test_serve_config_is_what_ray_serve_accepts(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    _, _, rendered = render(tmp_path)
    text = serving_objects(rendered)["RayService"]["spec"]["serveConfigV2"]
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    by_name = {a.name: a for a in schema.applications}
    assert list(by_name) == ["iris", "wine", "piml-check"]
    check = by_name["piml-check"]  # the deep check's: the newest version of its model, no replica until it asks
    assert check.args == {"route": "piml-check", "model": "models:/piml-check/latest", "batch_size": 8}
    assert (
        check.deployments[0].autoscaling_config["min_replicas"],
        check.deployments[0].autoscaling_config["max_replicas"],
    ) == (0, 1)
    iris = by_name["iris"]
    assert (iris.route_prefix, iris.import_path) == ("/serve/iris", "piml.serve.app:build")
    assert iris.args == {"route": "iris", "model": "models:/iris@champion", "batch_size": 16}
    (deployment,) = iris.deployments
    assert deployment.name == "model"  # piml/serve/app.py's deployment: an override of another name is refused
    assert deployment.max_ongoing_requests == 32  # twice the batch: Serve's default 5 would cap the batches
    assert (deployment.autoscaling_config["min_replicas"], deployment.autoscaling_config["max_replicas"]) == (1, 3)
    assert deployment.ray_actor_options.resources == {apps.SLOT: 1}
    assert by_name["wine"].deployments[0].autoscaling_config["min_replicas"] == 0
    # MLflow's credentials and the reload token are never in the CR's text (it is readable by anyone who can
    # read the RayService): they come from Secrets in the pods' env
    assert "PASSWORD" not in text and "TOKEN" not in text.replace("PIML_CODE_HASH", "")


def test_worker_groups_offer_one_slot_each_as_the_ray_autoscaler_reads_them(tmp_path):
    """Ray 2.60's own KubeRay config reader: a new serving pod offers no CPU for tasks and one replica slot, and
    the groups' maxima are the plan's (room for every route's max_replicas)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    plan, _, rendered = render(tmp_path, "amd64-server-arm64-agents")
    service = serving_objects(rendered)["RayService"]
    ray_cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": service["metadata"]}
    ray_cr["spec"] = service["spec"]["rayClusterConfig"]
    types = _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0  # no replica lands on the head
    pools = {f"serve-{p.arch}": p for p in plan.serve_workers}
    assert set(types) - {"headgroup"} == set(pools)
    for group, pool in pools.items():
        assert types[group]["resources"]["CPU"] == 0
        assert types[group]["resources"][apps.SLOT] == 1
        assert (types[group]["min_workers"], types[group]["max_workers"]) == (0, pool.replicas)
    assert sum(p.replicas for p in pools.values()) == 5  # iris 3 + wine 1 + the deep check's one
