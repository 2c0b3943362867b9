"""The capacity plan's arithmetic: no free memory counted twice, every container of the platform counted where it
runs (the Ray autoscaler sidecar, k3s's own pods), the operator never below its chart's limit, and allocatable
exactly as the kubelet will compute it from the reservations piml writes into each node's k3s config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from piml.config import PimlConfig
from piml.facts.model import NodeFacts
from piml.inventory import load_inventory
from piml.plan import capacity, make_plan, sizes
from piml.plan.quantities import cpu_m, memory_mi
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform

SCENARIOS = Path(__file__).resolve().parents[1] / "render" / "scenarios"
FITTING = ["pi5-3x8gb", "cm4-5x4gb", "amd64-server-arm64-agents", "single-node"]
CONFIGS = {
    "defaults": {},
    "postgres-minio-rabbitmq": {
        "mlflow": {"backend": "postgresql", "artifacts": "minio"},
        "queue": {"kind": "rabbitmq"},
        "ray": {"gcs_fault_tolerance": True},
    },
    "no-dask": {"dask": {"enabled": False}},
    "serving": {
        "serve": {
            "enabled": True,
            "routes": {
                "iris": {"model": "models:/iris@champion"},
                "wine": {"model": "models:/wine/2", "min_replicas": 0, "max_replicas": 2, "memory": "768Mi"},
            },
        }
    },
}


def cluster_for(scenario: str, tmp_path: Path, settings: dict | None = None) -> Cluster:
    path = SCENARIOS / f"{scenario}.yml"
    return Cluster(ProjectPaths(tmp_path, path), load_inventory(path), PimlConfig.model_validate(settings or {}))


def rendered(cluster, plan, kind, name):
    return next(
        o
        for r in render_platform(cluster, plan)
        for o in r.objects
        if o["kind"] == kind and o["metadata"]["name"] == name
    )


# -- 1. the free memory is split between Ray's workers and the queue's Jobs, not given to both ----------------------


# Five serving replicas do not fit beside the platform on one 8 GB board: the next test has that case.
FITTING_CASES = [(s, c) for s in FITTING for c in CONFIGS if (s, c) != ("single-node", "serving")]


@pytest.mark.parametrize("scenario,config", FITTING_CASES, ids=[f"{s}-{c}" for s, c in FITTING_CASES])
def test_everything_at_its_maximum_fits_the_allocatable(scenario, config, tmp_path):
    settings = CONFIGS[config]
    plan = make_plan(cluster_for(scenario, tmp_path, settings))
    memory = sum(plan.used(n.name)[1] for n in plan.nodes)
    cpu = sum(plan.used(n.name)[0] for n in plan.nodes)
    pools = plan.dask_workers + plan.ray_workers + plan.serve_workers
    memory += sum(p.replicas * p.size.memory_request for p in pools)
    cpu += sum(p.replicas * p.size.cpu_request for p in pools)
    memory += plan.max_jobs * plan.runner.memory_request
    cpu += plan.max_jobs * plan.runner.cpu_request
    assert memory <= sum(n.memory for n in plan.nodes), "Ray's maximum and the queue's max_jobs overcommit memory"
    assert cpu <= sum(n.cpu for n in plan.nodes), "Ray's maximum and the queue's max_jobs overcommit CPU"
    # each architecture's Ray pool fits the Ray share of that architecture's nodes
    for pool in plan.ray_workers:
        assert pool.replicas >= 1 and set(pool.nodes) <= {n.name for n in plan.nodes if n.arch == pool.arch}


def test_serving_that_does_not_fit_says_how_many_replicas_do(tmp_path):
    from piml.errors import InputError

    with pytest.raises(InputError) as info:
        make_plan(cluster_for("single-node", tmp_path, CONFIGS["serving"]))
    assert str(info.value) == (
        "piml.yaml: serve needs room for 5 replica pods (the routes' max_replicas, and 1 for `piml check --deep`) of "
        "600m CPU, 1536Mi each, and only 1 fit after the services and Dask workers; lower max_replicas or the "
        "routes' cpu/memory, switch a component off, or add a node"
    )


def test_serving_keeps_room_for_every_routes_maximum_before_ray_and_the_queue(tmp_path):
    without = make_plan(cluster_for("pi5-3x8gb", tmp_path))
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path, CONFIGS["serving"]))
    (pool,) = plan.serve_workers
    # one pod per replica (2 + 2, and one for the deep check's route), sized for the largest route (1Gi) plus Ray's
    # own processes beside it
    assert (pool.arch, pool.replicas) == ("arm64", 5)
    assert (pool.size.cpu_request, pool.size.memory_request, pool.size.memory_limit) == (600, 1536, 1536)
    # its own head and the head's autoscaler sidecar, together on one node
    head, sidecar = plan.placement("serve-head"), plan.placement("serve-autoscaler")
    assert head.node == sidecar.node
    # the five pods are taken before the Ray/queue split: what is left for work is the same, less the serving
    # head with its sidecar, and it now holds the five pods too

    def for_work(p):
        dask = sum(w.replicas * w.size.memory_request for w in p.dask_workers)
        serving = sum(w.replicas * w.size.memory_request for w in p.serve_workers)
        return dask + serving + p.split.ray_memory + p.split.queue_memory

    assert serving_total(plan) == 5 * 1536
    assert for_work(without) - for_work(plan) == pytest.approx(
        head.size.memory_request + sidecar.size.memory_request, abs=3
    )


def serving_total(plan) -> int:
    return sum(w.replicas * w.size.memory_request for w in plan.serve_workers)


def test_the_split_is_half_and_half_and_stated(tmp_path):
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path))
    split = plan.split
    assert (split.ray, split.queue) == (0.5, 0.5) == (sizes.WORK_SPLIT["ray"], sizes.WORK_SPLIT["queue"])
    assert abs(split.ray_memory - split.queue_memory) <= len(plan.nodes)  # rounding only
    pool = plan.ray_workers[0]
    assert pool.replicas * pool.size.memory_request <= split.ray_memory
    assert plan.max_jobs * plan.runner.memory_request <= split.queue_memory
    data = plan.as_dict()["work_split"]
    assert data["ray_share"] == 0.5 and data["queue_share"] == 0.5 and "split" in data["rule"]
    assert data["ray"]["memory_mi"] == split.ray_memory and data["queue"]["cpu_m"] == split.queue_cpu


@pytest.mark.parametrize("off, takes_all", [("ray", "queue"), ("queue", "ray")])
def test_one_switched_off_the_other_takes_it_all(tmp_path, off, takes_all):
    both = make_plan(cluster_for("pi5-3x8gb", tmp_path))
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path, {off: {"enabled": False}}))
    assert getattr(plan.split, takes_all) == 1.0 and getattr(plan.split, off) == 0.0
    if takes_all == "queue":
        assert not plan.ray_workers and plan.max_jobs > both.max_jobs
    else:
        assert plan.runner is None and sum(p.replicas for p in plan.ray_workers) > sum(
            p.replicas for p in both.ray_workers
        )


def test_a_max_jobs_beyond_the_share_is_said(tmp_path):
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path, {"queue": {"max_jobs": 100}}))
    assert plan.max_jobs == 100 and any("queue.max_jobs is 100" in n for n in plan.notes)


def test_plan_command_states_the_split(piml, tmp_path):
    inventory = str(SCENARIOS / "pi5-3x8gb.yml")
    out = piml("plan", "--json", "-i", inventory, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["work_split"]["ray_share"] == 0.5 and data["work_split"]["queue_share"] == 0.5
    assert {s["component"] for s in data["services"]} >= {"ray-autoscaler", "kuberay-operator"}
    assert {p["name"] for p in data["k3s_pods"]} == {"coredns", "metrics-server", "traefik", "local-path-provisioner"}
    assert all(n["kubelet_args"] for n in data["nodes"])
    text = " ".join(piml("plan", "-i", inventory, cwd=tmp_path).stdout.split())  # rich wraps at the terminal's width
    assert "split 50% Ray workers / 50% queue Jobs: Ray " in text and "k3s's pods" in text
    assert "kube-reserved=cpu=" in text and "eviction-hard=memory.available<" in text


# -- 2. the Ray autoscaler sidecar: counted on the head's node, rendered from the same numbers ----------------------


@pytest.mark.parametrize("scenario", FITTING)
def test_autoscaler_sidecar_is_counted_on_the_heads_node(scenario, tmp_path):
    cluster = cluster_for(scenario, tmp_path)
    plan = make_plan(cluster)
    head, sidecar = plan.placement("ray-head"), plan.placement("ray-autoscaler")
    assert sidecar is not None and sidecar.node == head.node
    assert sidecar.size == sizes.DEFAULTS["ray-autoscaler"]
    here = [p for p in plan.services if p.node == head.node]
    assert (
        plan.used(head.node)[1]
        >= sum(p.size.memory_request for p in here)
        >= head.size.memory_request + sidecar.size.memory_request
    )
    resources = rendered(cluster, plan, "RayCluster", "ray")["spec"]["autoscalerOptions"]["resources"]
    assert resources == {
        "requests": {"cpu": f"{sidecar.size.cpu_request}m", "memory": f"{sidecar.size.memory_request}Mi"},
        "limits": {"cpu": f"{sidecar.size.cpu_limit}m", "memory": f"{sidecar.size.memory_limit}Mi"},
    }


def test_head_and_sidecar_that_do_not_fit_together_are_an_error(tmp_path):
    # room for the head alone on the one node, not for the head and its sidecar
    cluster = cluster_for("single-node", tmp_path, {"ray": {"head": {"requests": {"memory": "6600Mi"}}}})
    with pytest.raises(Exception, match=r"ray-head \(with ray-autoscaler in its pod\) does not fit"):
        make_plan(cluster)


# -- 3. the KubeRay operator: never less memory than its chart's default limit -------------------------------------


def test_operator_limit_is_not_below_the_charts_512Mi(tmp_path):
    cluster = cluster_for("pi5-3x8gb", tmp_path)
    plan = make_plan(cluster)
    chart = rendered(cluster, plan, "HelmChart", "kuberay-operator")
    values = yaml.safe_load(chart["spec"]["valuesContent"])
    limits, requests = values["resources"]["limits"], values["resources"]["requests"]
    assert memory_mi(limits["memory"]) >= 512  # the chart's default limit
    assert sizes.KUBERAY_CHART_MEMORY_LIMIT == 512
    assert cpu_m(limits["cpu"]) >= 100  # the chart's cpu limit
    assert memory_mi(requests["memory"]) <= memory_mi(limits["memory"])
    operator = plan.placement("kuberay-operator")
    assert memory_mi(requests["memory"]) == operator.size.memory_request  # what the plan counts is what is rendered
    assert values["nodeSelector"] == {"kubernetes.io/hostname": operator.node}


# -- 4. reservations: the plan's allocatable is the kubelet's -------------------------------------------------------


def kubelet_allocatable(args: list[str], capacity_cpu: int, capacity_memory: int) -> tuple[int, int]:
    """What the kubelet computes from these flags: capacity - system-reserved - kube-reserved - eviction-hard."""
    flags = dict(arg.split("=", 1) for arg in args)
    cpu, memory = capacity_cpu, capacity_memory
    for name in ("system-reserved", "kube-reserved"):
        values = dict(item.split("=") for item in flags[name].split(","))
        cpu -= cpu_m(values["cpu"])
        memory -= memory_mi(values["memory"])
    thresholds = dict(item.split("<") for item in flags["eviction-hard"].split(","))
    memory -= memory_mi(thresholds["memory.available"])
    # k3s's own disk thresholds are kept (a kubelet flag replaces k3s's whole eviction-hard map)
    assert thresholds["imagefs.available"] == "5%" and thresholds["nodefs.available"] == "5%"
    return cpu, memory


@pytest.mark.parametrize("scenario", FITTING + ["cannot-fit"])
def test_allocatable_is_what_the_kubelet_will_say(scenario, tmp_path):
    cluster = cluster_for(scenario, tmp_path)
    args = capacity.kubelet_args(cluster)
    for node in cluster.inventory.cluster_nodes:
        for facts in (None, NodeFacts(memory_total_mb=7812, cpu_count=4, arch="arm64")):
            have = capacity.node_capacity(node, facts)
            assert kubelet_allocatable(args[node.name], have.total_cpu, have.total_memory) == (have.cpu, have.memory)
            assert have.total_memory - have.memory == have.reservation.memory


def test_servers_keep_more_than_agents(tmp_path):
    cluster = cluster_for("pi5-3x8gb", tmp_path)
    args = capacity.kubelet_args(cluster)
    assert (
        args["pi1"] == sizes.RESERVED["server"].kubelet_args() and args["pi2"] == sizes.RESERVED["agent"].kubelet_args()
    )
    assert args["pi1"] != args["pi2"]


# -- k3s's own pods (coredns, metrics-server, traefik, local-path-provisioner) --------------------------------------


def test_k3s_pods_are_counted_on_the_first_server(tmp_path):
    plan = make_plan(cluster_for("amd64-server-arm64-agents", tmp_path))
    assert {(s.name, s.node) for s in plan.system} == {
        (n, "nuc") for n in ("coredns", "metrics-server", "traefik", "local-path-provisioner")
    }
    services_cpu = sum(p.size.cpu_request for p in plan.services if p.node == "nuc")
    services_memory = sum(p.size.memory_request for p in plan.services if p.node == "nuc")
    assert plan.used("nuc") == (services_cpu + 200, services_memory + 140)  # coredns + metrics-server: 100m / 70Mi each


def test_disabled_k3s_components_are_not_counted(tmp_path):
    plan = make_plan(cluster_for("pi5-3x8gb", tmp_path, {"k3s": {"disable": ["metrics-server", "traefik"]}}))
    assert {s.name for s in plan.system} == {"coredns", "local-path-provisioner"}
