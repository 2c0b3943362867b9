"""piml's capacity plan against the REAL scheduler (kube-scheduler v1.36.3): for every scenario of
tests/render/scenarios, a control plane whose stand-in nodes are exactly the scenario's inventory nodes, and the
platform deployed on it by piml's own deploy.

For each scenario that plans (all but cannot-fit.yml):
  - one plane whose nodes are the inventory's k3s nodes, in its order (servers first: the first is labelled
    control-plane), each with the memory of `piml_memory_gb` as `<N>Gi` and the architecture piml gives it
    (piml.plan.capacity.node_capacity: piml_arch, else the model's);
  - the platform with the default settings, rendered as `piml up` renders it, deployed with
    `piml.kube.deploy.deploy` (every Deployment available, the RayCluster ready);
  - no pod of the platform's namespace is Pending: each is bound (spec.nodeName) and Running;
  - each pod of a service the plan places (plan.services[*].node, rendered as the nodeSelector
    kubernetes.io/hostname) runs on that node, and the Dask workers on exactly the nodes of their pool;
  - what the scheduler put on each node (the pods' requests, as the scheduler counts them) plus the k3s pods the
    plan counts there fits in what the plan says that node has for pods.

How strict this is. The stand-in's allocatable is its capacity minus 100Mi (the kubelet's eviction threshold),
with capacity the full `<N>Gi`; piml's plan starts from the board's MemTotal (about 3% less) and also subtracts
k3s's reservations (system-reserved, kube-reserved and its own eviction threshold: 1 GiB on a server, 512 MiB on
an agent) and k3s's own pods (CoreDNS, metrics-server), which the plane does not run. So the plan is stricter
than the stand-in, and "nothing Pending" alone could only catch pods the plan does not count or selectors that
match no node; the last check (the scheduler's placements against the plan's own per-node budget) is the one that
would catch a plan whose sums are wrong. CPU: every stand-in node has 4 CPUs (the amd64 server of
amd64-server-arm64-agents declares 8; what the plan puts there asks for far less than 4). The kuberay-operator and
KEDA run from HelmCharts whose charts the stand-in does not install (only their CRDs, chart_jobs.py): their pods are
not made, so their placement is not checked by the scheduler here.

cannot-fit.yml: piml refuses to plan it (InputError: what does not fit, with its request). To show the refusal is
right, a plane with its one node sized so that the stand-in's allocatable is what a real k3s server of that board
has for pods by piml's reservations (node_capacity's memory, + the stand-in's 100Mi): there, the k3s pods the plan
counts and then one Deployment per unit of the platform (a service with its sidecars, sized by piml, largest
first as the plan places them), each waited for in turn, and the real scheduler must leave Pending, with
"Insufficient memory", exactly the units the InputError names. (With the node at the full 2Gi, no reservations,
the 1280Mi Ray head alone would fit, which is why it is sized so.)

Each case is its own plane (~12 s up, ~3 s down); every wait is bounded.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.controlplane.objects import deployment
from tests.controlplane.test_control_plane import GO, cp, until

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "render" / "scenarios"
NOT_PLANNING = "cannot-fit"
FITTING = [s.stem for s in sorted(SCENARIOS.glob("*.yml")) if s.stem != NOT_PLANNING]
CHART_RUN = {"kuberay-operator", "keda"}  # HelmCharts: the stand-in applies their CRDs, makes no pods
EVICTION_MI = 100  # nodes.py: the stand-in's allocatable = capacity - 100Mi
NS = "piml"  # the platform's namespace with the default settings

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")


@pytest.fixture(scope="module", autouse=True)
def built():
    r = cp("build", timeout=3 * 3600)  # cold: minutes once; then reused from the cache
    assert r.returncode == 0, r.stderr


def memory_quantity(gb: float) -> str:
    return f"{int(gb)}Gi" if gb == int(gb) else f"{int(gb * 1024)}Mi"


def node_args(nodes: list[tuple[str, str, str]]) -> list[str]:
    return [a for name, memory, arch in nodes for a in ("--node", f"{name}:{memory}:{arch}")]


def scenario_cluster(tmp_path: Path, scenario: str):
    """The scenario's Cluster as `piml up` loads it (default settings), in a project directory `lab`."""
    from piml.config import PimlConfig
    from piml.inventory import load_inventory
    from piml.project import Cluster, ProjectPaths

    path = SCENARIOS / f"{scenario}.yml"
    root = tmp_path / "lab"
    root.mkdir()
    return Cluster(ProjectPaths(root, path), load_inventory(path), PimlConfig.model_validate({}))


def capacities(cluster) -> list:
    """piml's NodeCapacity of each k3s node, from the inventory (no facts): name, arch, memory."""
    from piml.plan.capacity import NodeCapacity, node_capacity

    out = []
    for node in cluster.inventory.cluster_nodes:
        cap = node_capacity(node, None)
        assert isinstance(cap, NodeCapacity), cap
        out.append(cap)
    return out


class Plane:
    def __init__(self, d: Path):
        self.dir = d

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        cp("down", str(self.dir), timeout=60)


def start(tmp_path: Path, nodes: list[tuple[str, str, str]], *extra: str) -> Plane:
    d = tmp_path / "plane"
    r = cp("up", str(d), *node_args(nodes), *extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return Plane(d)


def core_api(plane: Plane):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(plane.dir / "kubeconfig")))


def pod_requests(pod) -> tuple[int, int]:
    """(millicores, MiB) the scheduler counts for a pod: the larger of its containers' sum and its largest init
    container, plus the pod overhead."""
    from kubernetes.utils import parse_quantity

    def req(containers, key: str) -> list:
        return [parse_quantity(((c.resources and c.resources.requests) or {}).get(key, "0")) for c in containers or []]

    out = []
    for key, unit in (("cpu", 1000), ("memory", 1024**2)):
        total = max(sum(req(pod.spec.containers, key)), max(req(pod.spec.init_containers, key), default=0))
        total += parse_quantity((pod.spec.overhead or {}).get(key, "0"))
        out.append(int(total * unit) if key == "cpu" else int(total // unit))
    return out[0], out[1]


def component_of(pod) -> str:
    """The plan's component a platform pod belongs to: the Ray head, else its Deployment's (or StatefulSet's) name."""
    labels = pod.metadata.labels or {}
    if labels.get("ray.io/node-type") == "head":
        return "ray-head"
    for owner in pod.metadata.owner_references or []:
        if owner.kind == "ReplicaSet" and labels.get("pod-template-hash"):
            return owner.name.removesuffix("-" + labels["pod-template-hash"])
        if owner.kind == "StatefulSet":
            return owner.name
    return pod.metadata.name


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", FITTING)
def test_plan_fits_the_real_scheduler(tmp_path, scenario):
    from piml.kube.deploy import deploy
    from piml.plan import make_plan
    from piml.plan.sizes import SIDECARS
    from piml.render import render_platform
    from piml.secrets import load_or_create
    from tests.platform.conftest import FAST

    cluster = scenario_cluster(tmp_path, scenario)
    caps = capacities(cluster)
    nodes = [
        (n.name, memory_quantity(n.memory_gb), c.arch)
        for n, c in zip(cluster.inventory.cluster_nodes, caps, strict=True)
    ]
    plan = make_plan(cluster)
    rendered = render_platform(cluster, plan, load_or_create(cluster.paths.root / ".piml"))
    assert cluster.config.namespace == NS

    with start(tmp_path, nodes) as plane:
        deploy(cluster, plane.dir / "kubeconfig", rendered, FAST)  # raises DeployError unless all is ready

        core = core_api(plane)
        pods = core.list_namespaced_pod(NS, _request_timeout=10).items
        assert pods, "no pod in the platform's namespace"
        pending = [
            f"{p.metadata.name}: phase {p.status.phase}, node {p.spec.node_name}, "
            + "; ".join(f"{c.type}={c.status} {c.reason or ''} {c.message or ''}" for c in p.status.conditions or [])
            for p in pods
            if not p.spec.node_name or p.status.phase != "Running"
        ]
        assert not pending, f"{scenario}: pods not running: {pending}"

        # Where the plan pins a service, its pod is there.
        planned = {p.component: p.node for p in plan.services}
        landed = {component_of(p): p.spec.node_name for p in pods}
        wrong = {c: (landed[c], planned[c]) for c in planned if c in landed and landed[c] != planned[c]}
        assert not wrong, f"{scenario}: component: (ran on, planned on): {wrong}"
        sidecars = {s for parent in SIDECARS.values() for s in parent}
        missing = set(planned) - CHART_RUN - sidecars - set(landed)
        assert not missing, f"{scenario}: planned services without a pod: {sorted(missing)} (pods: {sorted(landed)})"
        for pool in plan.dask_workers:
            on = sorted(p.spec.node_name for p in pods if component_of(p) == f"dask-worker-{pool.arch}")
            assert on == sorted(pool.nodes), f"{scenario}: dask workers ({pool.arch}) on {on}, planned {pool.nodes}"

        # What the scheduler put on each node fits in the plan's budget for that node (stricter than the stand-in).
        over = []
        for cap in plan.nodes:
            here = [pod_requests(p) for p in pods if p.spec.node_name == cap.name]
            cpu = sum(c for c, _ in here) + sum(s.cpu_request for s in plan.system if s.node == cap.name)
            memory = sum(m for _, m in here) + sum(s.memory_request for s in plan.system if s.node == cap.name)
            if memory > cap.memory or cpu > cap.cpu:
                over.append(f"{cap.name}: {memory}Mi/{cpu}m requested, the plan has {cap.memory}Mi/{cap.cpu}m")
        assert not over, f"{scenario}: more than the plan's budget on: {over}"


def refused_units(error) -> dict[str, int]:
    """{component: MiB requested} for each unit piml's InputError says does not fit."""
    from piml.plan.quantities import memory_mi

    out = {}
    for problem in error.problems:
        m = re.match(r"(\S+)(?: \(with .+ in its pod\))? does not fit: it requests (\S+?),", problem.what)
        assert m, f"not a does-not-fit problem: {problem.what}"
        out[m.group(1)] = memory_mi(m.group(2))
    return out


def pinned_deployment(name: str, cpu_m: int, memory_mi: int, node: str) -> dict:
    container = {
        "name": "main",
        "image": "busybox:1.36",
        "resources": {"requests": {"cpu": f"{cpu_m}m", "memory": f"{memory_mi}Mi"}},
    }
    return deployment(name, {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [container]}, "fit")


@pytest.mark.timeout(180)
def test_cannot_fit_is_refused_as_the_real_scheduler_would(tmp_path):
    from kubernetes import client

    from piml.errors import InputError
    from piml.plan import make_plan
    from piml.plan.capacity import platform_services
    from piml.plan.sizes import K3S_PODS, SIDECARS

    cluster = scenario_cluster(tmp_path, NOT_PLANNING)
    with pytest.raises(InputError) as refused:
        make_plan(cluster)
    refused_now = refused_units(refused.value)
    assert refused_now, "cannot-fit planned"
    (cap,) = capacities(cluster)
    first = cluster.inventory.servers[0].name

    # piml's units as make_plan places them: a service with the sidecars of its pod, largest first.
    sized = dict(platform_services(cluster.config))
    sidecars = {s for parent in SIDECARS.values() for s in parent}
    units = {name: [name, *(s for s in SIDECARS.get(name, ()) if s in sized)] for name in sized if name not in sidecars}
    totals = {
        name: (sum(sized[m].cpu_request for m in members), sum(sized[m].memory_request for m in members))
        for name, members in units.items()
    }
    for name, memory in refused_now.items():
        assert totals[name][1] == memory, f"{name}: the InputError says {memory}Mi, piml's sizes {totals[name]}"
    order = [("k3s-" + p.name, (p.cpu_request, p.memory_request)) for p in K3S_PODS if p.memory_request]
    order += sorted(totals.items(), key=lambda item: -item[1][1])

    # The node as a real k3s server of this board with piml's reservations: allocatable = the plan's memory.
    with start(
        tmp_path,
        [(cap.name, f"{cap.memory + EVICTION_MI}Mi", cap.arch)],
        "--no-helm-controller",
        "--no-kuberay",
        "--no-local-path",
        "--no-traefik-crds",
    ) as plane:
        core = core_api(plane)
        apps = client.AppsV1Api(core.api_client)
        node = core.read_node(cap.name, _request_timeout=10)
        assert node.status.allocatable["memory"] == f"{cap.memory}Mi"
        core.create_namespace({"metadata": {"name": "fit"}}, _request_timeout=10)
        until(
            "the default ServiceAccount in namespace fit",
            lambda: core.list_namespaced_service_account("fit", _request_timeout=10).items,
            30,
        )

        def outcome(name: str):
            """('bound', node) or ('pending', the scheduler's message) once the scheduler has decided."""
            for pod in core.list_namespaced_pod("fit", label_selector=f"app={name}", _request_timeout=10).items:
                if pod.spec.node_name:
                    return "bound", pod.spec.node_name
                for c in pod.status.conditions or []:
                    if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                        return "pending", c.message
            return None

        pending = {}
        for name, (cpu_m, memory_mi) in order:
            body = pinned_deployment(name, cpu_m, memory_mi, first)
            apps.create_namespaced_deployment("fit", body, _request_timeout=10)
            state, detail = until(f"the scheduler's decision on {name}", lambda name=name: outcome(name), 30)
            if state == "pending":
                pending[name] = detail
        time.sleep(2)  # the scheduler retries unschedulable pods on each bind: none may fit later
        late = [name for name in pending if (outcome(name) or ("",))[0] != "pending"]
        assert not late, f"scheduled after all: {late}"

    assert set(pending) == set(refused_now), (
        f"the real scheduler left Pending {sorted(pending)}, piml refused {sorted(refused_now)}: {pending}"
    )
    assert all("Insufficient memory" in message for message in pending.values()), pending
