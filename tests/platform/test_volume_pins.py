"""Local-path volumes are tied to a node: adding one must not move MLflow or Redis away from their data.

Against the real control plane: k3s's local-path-provisioner makes each claim's volume on the node the real
scheduler chose for its first pod (a PersistentVolume with a required nodeAffinity), and the real scheduler leaves
a pod whose nodeSelector names another node Pending ("didn't match PersistentVolume's node affinity")."""

from __future__ import annotations

import json

import pytest

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.kube.client import connect
from piml.kube.deploy import DeployError, deploy
from piml.kube.volumes import claim_nodes
from piml.plan import make_plan
from piml.plan.pins import VOLUMES, read_pins
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from tests.platform.conftest import FAST, INVENTORY, SHORT, api_gone

# node-3 joins the inventory later (the plane has node-1..3 from the start: the scheduler can use it once the plan
# does)
TWO = "\n".join(line for line in INVENTORY.splitlines() if not line.strip().startswith("node-3:")) + "\n"
THREE = INVENTORY
STATEFUL = ("mlflow", "redis")


def project_cluster(project, inventory: str) -> Cluster:
    project.inventory.write_text(inventory)
    return Cluster(ProjectPaths(project.root, project.inventory), load_inventory(project.inventory), PimlConfig())


def placed(rendered) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
        for r in rendered
        for o in r.objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] in STATEFUL
    }


def volume_nodes(plane) -> dict[str, str]:
    """{claim: node} as the provisioner made the volumes: read from the PersistentVolumes themselves."""
    kube = plane.kube()
    try:
        out = {}
        for pv in kube.request("GET", "/api/v1/persistentvolumes")["items"]:
            claim = pv["spec"].get("claimRef") or {}
            if claim.get("namespace") == "piml":
                (term,) = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
                (expression,) = term["matchExpressions"]
                out[claim["name"]] = expression["values"][0]
        return out
    finally:
        kube.close()


def first_deploy(project, plane) -> dict[str, str]:
    """The platform on node-1 + node-2; returns {claim: node} as the provisioner made the volumes."""
    cluster = project_cluster(project, TWO)
    deploy(cluster, project.kubeconfig, render_platform(cluster, make_plan(cluster), project.secrets), FAST)
    volumes = volume_nodes(plane)
    assert set(volumes) == {VOLUMES[c] for c in STATEFUL} and set(volumes.values()) <= {"node-1", "node-2"}
    return volumes


def test_the_real_scheduler_shows_the_bug_a_moved_service_never_schedules(project, plane):
    volumes = first_deploy(project, plane)
    cluster = project_cluster(project, THREE)
    rendered = render_platform(cluster, make_plan(cluster), project.secrets)  # planned blind, as before issue 10
    moved = {name for name, node in placed(rendered).items() if node != volumes[VOLUMES[name]]}
    assert moved  # the new, empty node draws them
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    lines = [str(p) for p in caught.value.problems]
    assert {line.split(":")[0] for line in lines} == {f"Deployment piml/{name}" for name in moved}
    # Kubernetes v1.36's words (the API stand-in had the older "had volume node affinity conflict")
    assert all("didn't match PersistentVolume's node affinity" in line for line in lines), "\n".join(lines)


def test_planned_against_the_cluster_they_stay_with_their_data(project, plane):
    volumes = first_deploy(project, plane)
    kube = connect(project.kubeconfig)
    try:
        assert claim_nodes(kube, "piml") == volumes  # read back through the API, as piml does
    finally:
        kube.close()
    cluster = project_cluster(project, THREE)
    pins = read_pins(cluster)
    assert {c: (p.node, p.claim) for c, p in pins.items()} == {c: (volumes[VOLUMES[c]], VOLUMES[c]) for c in STATEFUL}
    rendered = render_platform(cluster, make_plan(cluster, pins=pins), project.secrets)
    assert placed(rendered) == {name: volumes[VOLUMES[name]] for name in STATEFUL}
    report = deploy(cluster, project.kubeconfig, rendered, FAST)  # MLflow changes (node-3 joins its allowed hosts)
    assert report.ok and "Deployment piml/redis" in {str(a.ref) for a in report.applied if a.action == "unchanged"}
    assert volume_nodes(project.plane) == volumes


def test_up_platform_keeps_them_and_refuses_when_their_node_is_gone(piml, project, plane):
    project_cluster(project, TWO)
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    volumes = {c: volume_nodes(plane)[VOLUMES[c]] for c in STATEFUL}

    project_cluster(project, THREE)  # a node added to the inventory
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    objects = {
        o["name"]: o["action"]
        for o in json.loads(out.stdout)["stages"]["platform"]["objects"]
        if o["kind"] == "Deployment"
    }
    assert objects["redis"] == "unchanged"
    kube = plane.kube()
    try:
        selectors = {
            name: kube.get(f"/apis/apps/v1/namespaces/piml/deployments/{name}")["spec"]["template"]["spec"][
                "nodeSelector"
            ]["kubernetes.io/hostname"]
            for name in STATEFUL
        }
    finally:
        kube.close()
    assert selectors == volumes
    plan = json.loads(piml("plan", "--json", cwd=project.root).stdout)
    assert {p["component"]: p["node"] for p in plan["pins"]} == volumes
    assert "stays on" in piml("plan", cwd=project.root).stdout

    gone = volumes["redis"]  # the node with Redis's data leaves the inventory
    assert gone != "node-1", "the plan put Redis on the only server: pick another stateful service for this test"
    project_cluster(
        project, "\n".join(line for line in THREE.splitlines() if not line.strip().startswith(f"{gone}:")) + "\n"
    )
    out = piml("up", "--only", "platform", cwd=project.root)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    assert f"redis's data is on node {gone}" in out.stderr and "kubectl -n piml delete pvc redis-data" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_without_the_api_says_so_and_render_refuses(piml, project):
    project_cluster(project, TWO)
    with api_gone(project):
        plan = piml("plan", "--json", cwd=project.root)
        render = piml("render", cwd=project.root)
    assert plan.returncode == 0, plan.stderr
    assert any("does not know which nodes the volumes" in n for n in json.loads(plan.stdout)["notes"])
    assert render.returncode == 1 and "cannot tell which nodes the platform's volumes are on" in render.stderr
    assert "Traceback" not in plan.stderr + render.stderr
