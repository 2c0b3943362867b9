"""The drain every upgrade and node removal runs (playbooks/tasks/drain.yml), run as the playbook renders it, by
the real kubectl v1.36.3 (`k3s kubectl` is kubectl) against the real control plane: its eviction API, the
disruption controller behind PodDisruptionBudgets, the real garbage collector. The k3s stand-in of the node tests
only plays kubectl's part; here kubectl decides.

`/usr/local/bin/k3s kubectl` becomes the built kubectl with the plane's kubeconfig (k3s's reads
/etc/rancher/k3s/k3s.yaml); every other word is the task's. On failure the rescue task's message is rendered as
Ansible would, from what kubectl said."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
import yaml

from tests.controlplane.test_control_plane import until

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
DRAIN_TASKS = PLAYBOOKS / "tasks" / "drain.yml"
NAMESPACE = "drain-test"


def render(template: str, variables: dict) -> str:
    """A template of a playbook rendered by Ansible's own templating (its filters and tests, e.g. `search`)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    trusted = {k: trust_as_template(v) if isinstance(v, str) else v for k, v in variables.items()}
    return Templar(loader=DataLoader(), variables=trusted).template(trust_as_template(template))


def run(kubectl: Path, kubeconfig: Path, command: str, facts: dict, bound: float):
    """Run a `k3s kubectl` command of a playbook, rendered with `facts`, by the real kubectl; (done, seconds)."""
    import subprocess

    argv = shlex.split(render(command, facts))
    assert argv[:2] == ["/usr/local/bin/k3s", "kubectl"], argv
    t0 = time.monotonic()
    done = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *argv[2:]], capture_output=True, text=True, timeout=bound
    )
    return done, time.monotonic() - t0


def drain(kubectl: Path, kubeconfig: Path, node: str, timeout: int) -> tuple[int, str, str, float]:
    """Run the rendered drain of `node` bounded by `timeout` (_drain_timeout); (exit code, stderr, the rescue's
    message, seconds taken)."""
    block = yaml.safe_load(DRAIN_TASKS.read_text())[0]
    command = next(t["ansible.builtin.command"] for t in block["block"] if "ansible.builtin.command" in t)
    rescue = next(t for t in block["rescue"] if "ansible.builtin.fail" in t)
    facts = {"inventory_hostname": node, "_drain_timeout": timeout, "_drain_left": "LEFT", "_drain_next": "NEXT"}
    done, took = run(kubectl, kubeconfig, command, facts, timeout + 30)
    registered = {"_drain": {"rc": done.returncode, "stderr": done.stderr}}
    said = render(rescue["ansible.builtin.fail"]["msg"], {**facts, **registered, **rescue.get("vars", {})})
    return done.returncode, done.stderr, said, took


def deployment(name: str, node: str, replicas: int, **pod: object) -> dict:
    labels = {"app": name}
    spec = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "registry.invalid/app:1"}],
        **pod,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


@pytest.fixture
def cluster(plane):
    """The plane's API, a namespace for the test's workloads, and every node schedulable again after."""
    kube = plane.kube()
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}})
    yield kube
    for node in ("node-2", "node-3"):
        kube.request(
            "PATCH",
            f"/api/v1/nodes/{node}",
            body={"spec": {"unschedulable": None}},
            content_type="application/merge-patch+json",
        )
    for pod in kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
        if pod["metadata"].get("finalizers"):
            kube.request(
                "PATCH",
                f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}",
                body={"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
            )
    kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
    until("the test namespace gone", lambda: kube.get(f"/api/v1/namespaces/{NAMESPACE}") is None, timeout=60)
    kube.close()


def create(kube, obj: dict) -> None:
    group = "/apis/apps/v1" if obj["apiVersion"] == "apps/v1" else "/apis/policy/v1"
    kube.request("POST", f"{group}/namespaces/{NAMESPACE}/{obj['kind'].lower()}s", body=obj)


def ready_pods(kube, app: str, node: str) -> list[dict]:
    pods = kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", {"labelSelector": f"app={app}"})["items"]
    return [
        p
        for p in pods
        if p["spec"].get("nodeName") == node
        and not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def pod_of_a_down_board(kube, node: str) -> str:
    """A Deployment's pod Running on `node` whose end no kubelet will confirm, as on a board that is down (a
    finalizer holds it once deleted); its name."""
    create(kube, deployment("stuck", node, 1))
    pod = until(f"stuck's pod Ready on {node}", lambda: ready_pods(kube, "stuck", node))[0]["metadata"]["name"]
    kube.request(
        "PATCH",
        f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}",
        body={"metadata": {"finalizers": ["piml.test/board-down"]}},
        content_type="application/merge-patch+json",
    )
    return pod


def test_the_drain_cordons_and_evicts_and_emptydir_data_does_not_stop_it(cluster, plane, kubectl):
    volumes = {"volumes": [{"name": "scratch", "emptyDir": {}}]}
    create(cluster, deployment("web", "node-2", 2, **volumes))
    until("web's two pods Ready on node-2", lambda: len(ready_pods(cluster, "web", "node-2")) == 2)
    rc, stderr, _said, _took = drain(kubectl, plane.kubeconfig, "node-2", 60)
    assert rc == 0, stderr
    assert cluster.get("/api/v1/nodes/node-2")["spec"].get("unschedulable") is True
    assert not [
        p
        for p in cluster.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
        if p["spec"].get("nodeName") == "node-2"
    ]
    # The drain is idempotent: a resumed upgrade drains the node it had drained already.
    assert drain(kubectl, plane.kubeconfig, "node-2", 60)[0] == 0


def test_what_a_disruption_budget_keeps_is_named_in_the_failure(cluster, plane, kubectl):
    create(cluster, deployment("guarded", "node-3", 1))
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": NAMESPACE},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    create(cluster, budget)
    pod = until("guarded's pod Ready on node-3", lambda: ready_pods(cluster, "guarded", "node-3"))[0]
    path = f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/guarded"
    until("the disruption controller's count", lambda: (cluster.get(path).get("status") or {}).get("currentHealthy"))
    rc, stderr, said, took = drain(kubectl, plane.kubeconfig, "node-3", 12)
    assert rc != 0 and took < 40, (rc, took, stderr)
    assert pod["metadata"]["name"] in said and "disruption budget" in said, said  # what the user reads
    assert ready_pods(cluster, "guarded", "node-3")  # kept running: the budget held


def test_a_down_boards_pods_do_not_hold_the_drain_to_its_bound(cluster, plane, kubectl):
    """No kubelet confirms the end of a pod on a board that is down: its pods keep a deletionTimestamp and stay
    (a finalizer plays that here). kubectl stops waiting for them 20 s after their grace period: the resumed
    upgrade and the removal of a dead board drain within that, not at the drain's bound (seen in CI)."""
    pod = pod_of_a_down_board(cluster, "node-2")
    rc, stderr, _said, took = drain(kubectl, plane.kubeconfig, "node-2", 120)
    assert rc == 0, stderr
    assert took < 60, f"the drain waited {took:.0f} s for a pod no kubelet will end"
    left = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")
    assert left and left["metadata"].get("deletionTimestamp")  # still there, as on a down board


def test_teardowns_drain_of_a_dead_agent_does_not_wait_for_its_pods_to_its_bound(cluster, plane, kubectl):
    """`piml teardown --k3s` drains each agent before deleting it (playbooks/teardown.yml); an agent that is dead
    (a finalizer plays its pods that no kubelet ends) held each drain 60 s, its bound, before."""
    play = yaml.safe_load((PLAYBOOKS / "teardown.yml").read_text())[0]
    command = next(t["ansible.builtin.command"] for t in play["tasks"] if t["name"] == "Drain the node")
    pod_of_a_down_board(cluster, "node-3")
    done, took = run(kubectl, plane.kubeconfig, command, {"inventory_hostname": "node-3"}, 120)
    assert done.returncode == 0 and took < 50, (done.returncode, round(took), done.stderr)
