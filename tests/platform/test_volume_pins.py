"""Local-path volumes are tied to a node: adding one must not move MLflow or Redis away from their data.

Against the API stand-in, which makes each local-path claim's volume on the node its first pod runs on (a
PersistentVolume with a required nodeAffinity, as k3s's provisioner does) and leaves a pod whose nodeSelector
names another node Pending with the scheduler's `volume node affinity conflict`."""

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
from tests.platform.conftest import FAST, LOOPBACK_INVENTORY, SHORT

# pi3 joins later (the stand-in has pi1-pi3 from the start: the scheduler can use it once the plan does)
THREE = LOOPBACK_INVENTORY.replace(
    "        pi2: {ansible_host: 127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}\n",
    "        pi2: {ansible_host: 127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}\n"
    "        pi3: {ansible_host: 127.0.0.3, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}\n")
STATEFUL = ("mlflow", "redis")


def project_cluster(project, inventory: str) -> Cluster:
    path = project.root / "inventory" / "hosts.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(inventory)
    return Cluster(ProjectPaths(project.root, path), load_inventory(path), PimlConfig())


def placed(rendered) -> dict[str, str]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
            for r in rendered for o in r.objects if o["kind"] == "Deployment" and o["metadata"]["name"] in STATEFUL}


def first_deploy(project, kubeapi) -> dict[str, str]:
    """The platform on pi1 + pi2; returns {claim: node} as the stand-in made the volumes."""
    cluster = project_cluster(project, LOOPBACK_INVENTORY)
    deploy(cluster, project.kubeconfig, render_platform(cluster, make_plan(cluster), project.secrets), FAST)
    volumes = {VOLUMES[c]: kubeapi.volume_node("piml", VOLUMES[c]) for c in STATEFUL}
    assert all(volumes.values()) and set(volumes.values()) <= {"pi1", "pi2"}
    assert kubeapi.names("persistentvolumes") == {f"pvc-{kubeapi.get('persistentvolumeclaims', 'piml', c)['metadata']['uid']}" for c in volumes}
    return volumes


def test_the_stand_in_shows_the_bug_a_moved_service_never_schedules(project, kubeapi):
    volumes = first_deploy(project, kubeapi)
    cluster = project_cluster(project, THREE)
    rendered = render_platform(cluster, make_plan(cluster), project.secrets)  # planned blind, as before issue 10
    moved = {name for name, node in placed(rendered).items() if node != volumes[VOLUMES[name]]}
    assert moved  # the new, empty node draws them
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    lines = [str(p) for p in caught.value.problems]
    assert {line.split(":")[0] for line in lines} == {f"Deployment piml/{name}" for name in moved}
    assert all("had volume node affinity conflict" in line for line in lines)


def test_planned_against_the_cluster_they_stay_with_their_data(project, kubeapi):
    volumes = first_deploy(project, kubeapi)
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
    report = deploy(cluster, project.kubeconfig, rendered, FAST)  # MLflow changes (pi3's name joins its allowed hosts)
    assert report.ok and "Deployment piml/redis" in {str(a.ref) for a in report.applied if a.action == "unchanged"}
    assert {VOLUMES[c]: kubeapi.volume_node("piml", VOLUMES[c]) for c in STATEFUL} == volumes


def test_up_platform_keeps_them_and_refuses_when_their_node_is_gone(piml, project, kubeapi):
    project_cluster(project, LOOPBACK_INVENTORY)
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    volumes = {c: kubeapi.volume_node("piml", VOLUMES[c]) for c in STATEFUL}

    project_cluster(project, THREE)  # a node added to the inventory
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    objects = {o["name"]: o["action"] for o in json.loads(out.stdout)["stages"]["platform"]["objects"] if o["kind"] == "Deployment"}
    assert objects["redis"] == "unchanged"
    selectors = {name: kubeapi.get("deployments", "piml", name)["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
                 for name in STATEFUL}
    assert selectors == volumes
    plan = json.loads(piml("plan", "--json", cwd=project.root).stdout)
    assert {p["component"]: p["node"] for p in plan["pins"]} == volumes
    assert "stays on" in piml("plan", cwd=project.root).stdout

    gone = volumes["redis"]  # the node with Redis's data leaves the inventory
    assert gone != "pi1", "the plan put Redis on the only server: pick another stateful service for this test"
    project_cluster(project, "\n".join(line for line in THREE.splitlines() if not line.strip().startswith(f"{gone}:")) + "\n")
    out = piml("up", "--only", "platform", cwd=project.root)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    assert f"redis's data is on node {gone}" in out.stderr and "kubectl -n piml delete pvc redis-data" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_without_the_api_says_so_and_render_refuses(piml, project, kubeapi):
    project_cluster(project, LOOPBACK_INVENTORY)
    kubeapi.stop()  # the kubeconfig now points at a loopback port where nothing answers
    out = piml("plan", "--json", cwd=project.root)
    assert out.returncode == 0, out.stderr
    assert any("does not know which nodes the volumes" in n for n in json.loads(out.stdout)["notes"])
    out = piml("render", cwd=project.root)
    assert out.returncode == 1 and "cannot tell which nodes the platform's volumes are on" in out.stderr
    assert "Traceback" not in out.stderr
