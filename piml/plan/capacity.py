"""Place every platform service on a node and size the worker pools to fit what is left.

Inputs: the cluster model, plus facts when the nodes were reached (else the inventory's declared
`piml_memory_gb` and model). A service that fits nowhere is an error naming the node that came
closest and by how much, with the fixes a user has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from piml.errors import InputError, Problem
from piml.inventory import Node, Role
from piml.plan import sizes
from piml.plan.quantities import fmt_memory
from piml.plan.sizes import Size

if TYPE_CHECKING:
    from piml.config import PimlConfig
    from piml.facts.model import NodeFacts
    from piml.project import Cluster

# Which piml.yaml section switches each service off.
SECTION_OF = {"mlflow": "mlflow", "postgres": "mlflow", "minio": "mlflow", "dask-scheduler": "dask",
              "kuberay-operator": "ray", "ray-head": "ray", "redis": "queue", "rabbitmq": "queue", "keda": "queue"}
SERVICES_LABEL = "piml.io/services"  # label nodes "true" to keep the platform services on them


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    arch: str
    role: str
    cpu: int  # allocatable millicores, after the OS/k3s reservation
    memory: int  # allocatable MiB, after the OS/k3s reservation
    total_memory: int  # MiB the board has
    source: str  # "facts" or "inventory"


@dataclass(frozen=True)
class Placement:
    component: str
    node: str
    arch: str
    size: Size


@dataclass(frozen=True)
class WorkerPool:
    kind: str  # dask | ray
    arch: str
    size: Size
    replicas: int  # dask: running workers; ray: the autoscaler's maximum
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    nodes: tuple[NodeCapacity, ...]
    services: tuple[Placement, ...]
    dask_workers: tuple[WorkerPool, ...] = ()
    ray_workers: tuple[WorkerPool, ...] = ()
    runner: Size | None = None
    max_jobs: int = 0
    notes: tuple[str, ...] = field(default=())

    def placement(self, component: str) -> Placement | None:
        return next((p for p in self.services if p.component == component), None)

    def used(self, node: str) -> tuple[int, int]:
        """(millicores, MiB) the services request on `node`."""
        here = [p.size for p in self.services if p.node == node]
        return sum(s.cpu_request for s in here), sum(s.memory_request for s in here)

    @property
    def services_memory(self) -> int:
        return sum(p.size.memory_request for p in self.services)

    @property
    def total_memory(self) -> int:
        return sum(n.total_memory for n in self.nodes)

    @property
    def workload_share(self) -> float:
        """Share of the boards' memory left for workloads (not the OS, k3s or platform services)."""
        allocatable = sum(n.memory for n in self.nodes)
        return (allocatable - self.services_memory) / self.total_memory if self.total_memory else 0.0

    def as_dict(self) -> dict:
        def size(s: Size) -> dict:
            return {"requests": {"cpu_m": s.cpu_request, "memory_mi": s.memory_request},
                    "limits": {"cpu_m": s.cpu_limit, "memory_mi": s.memory_limit}}

        return {
            "nodes": [{**n.__dict__, "services_cpu_m": self.used(n.name)[0], "services_memory_mi": self.used(n.name)[1]} for n in self.nodes],
            "services": [{"component": p.component, "node": p.node, "arch": p.arch, **size(p.size)} for p in self.services],
            "dask_workers": [{"arch": w.arch, "replicas": w.replicas, "nodes": list(w.nodes), **size(w.size)} for w in self.dask_workers],
            "ray_workers": [{"arch": w.arch, "max_replicas": w.replicas, "nodes": list(w.nodes), **size(w.size)} for w in self.ray_workers],
            "runner": {"max_jobs": self.max_jobs, **size(self.runner)} if self.runner else None,
            "services_memory_mi": self.services_memory,
            "workload_share": round(self.workload_share, 3),
            "notes": list(self.notes),
        }


def platform_services(config: "PimlConfig") -> list[tuple[str, Size]]:
    """The services the settings switch on, each with its size (defaults, then piml.yaml)."""
    d = sizes.DEFAULTS
    wanted: list[tuple[str, Size]] = []
    if config.mlflow.enabled:
        wanted.append(("mlflow", d["mlflow"].override(config.mlflow.resources)))
        if config.mlflow.backend == "postgresql" and not config.mlflow.backend_uri:
            wanted.append(("postgres", d["postgres"]))
        if config.mlflow.artifacts == "minio" and not config.mlflow.artifacts_uri:
            wanted.append(("minio", d["minio"]))
    if config.dask.enabled:
        wanted.append(("dask-scheduler", d["dask-scheduler"].override(config.dask.scheduler)))
    if config.ray.enabled:
        wanted += [("kuberay-operator", d["kuberay-operator"]), ("ray-head", d["ray-head"].override(config.ray.head))]
    redis_needed = (config.queue.enabled and config.queue.kind == "redis") or (config.ray.enabled and config.ray.gcs_fault_tolerance)
    if redis_needed:
        wanted.append(("redis", d["redis"]))
    if config.queue.enabled:
        if config.queue.kind == "rabbitmq":
            wanted.append(("rabbitmq", d["rabbitmq"]))
        wanted.append(("keda", d["keda"]))
    return wanted


def node_capacity(node: Node, facts: "NodeFacts | None") -> NodeCapacity | Problem:
    memory = cpus = arch = None
    source = "facts" if facts is not None else "inventory"
    if facts is not None:
        memory, cpus, arch = facts.memory_total_mb, facts.cpu_count, facts.arch
    if memory is None and node.memory_gb:
        memory = int(node.memory_gb * 1024 * (1 - sizes.FIRMWARE_SHARE))
    cpus = cpus or node.cpus or sizes.CPUS_BY_MODEL.get(node.model or "")
    arch = arch if arch in ("arm64", "amd64") else node.arch
    if memory is None or cpus is None or arch is None:
        missing = ", ".join(k for k, v in (("memory (piml_memory_gb)", memory), ("CPUs (piml_cpus)", cpus), ("architecture (piml_arch)", arch)) if v is None)
        return Problem(node.where or node.name, f"cannot size node '{node.name}': its {missing} is unknown",
                       "let piml reach it (piml plan --reach), or declare it in the inventory")
    reserved_memory, reserved_cpu = sizes.RESERVED["server" if node.role is Role.SERVER else "agent"]
    return NodeCapacity(node.name, arch, str(node.role), cpus * 1000 - reserved_cpu, memory - reserved_memory, memory, source)


def make_plan(cluster: "Cluster", facts: "dict[str, NodeFacts] | None" = None) -> Plan:
    facts = facts or {}
    problems: list[Problem] = []
    capacities: list[NodeCapacity] = []
    nodes = cluster.inventory.cluster_nodes
    for node in nodes:
        result = node_capacity(node, facts.get(node.name))
        (problems.append if isinstance(result, Problem) else capacities.append)(result)
    if problems:
        raise InputError(problems)

    by_name = {n.name: n for n in nodes}
    labelled = [c for c in capacities if by_name[c.name].labels.get(SERVICES_LABEL) == "true"]
    candidates = labelled or capacities  # servers come first in the inventory order
    free = {c.name: [c.cpu, c.memory] for c in capacities}
    placements: list[Placement] = []
    services = platform_services(cluster.config)
    # Largest first onto the node with the most free memory: balances the load, fits more.
    for component, size in sorted(services, key=lambda item: -item[1].memory_request):
        fitting = [c for c in candidates if free[c.name][1] >= size.memory_request and free[c.name][0] >= size.cpu_request]
        if not fitting:
            best = max(candidates, key=lambda c: free[c.name][1])
            short = size.memory_request - free[best.name][1]
            what = f"{short} MiB of memory" if short > 0 else f"{size.cpu_request - free[best.name][0]}m of CPU"
            problems.append(Problem(
                cluster.paths.show(cluster.paths.config), f"{component} does not fit: it requests {fmt_memory(size.memory_request)}, "
                f"and the roomiest node, {best.name}, is short by {what}",
                f"switch off a component in piml.yaml (e.g. `{SECTION_OF[component]}: {{enabled: false}}`), give it smaller resources, or add a node"))
            continue
        target = max(fitting, key=lambda c: free[c.name][1])
        free[target.name][0] -= size.cpu_request
        free[target.name][1] -= size.memory_request
        placements.append(Placement(component, target.name, target.arch, size))
    if problems:
        raise InputError(problems)
    order = [name for name, _ in services]
    placements.sort(key=lambda p: order.index(p.component))
    return _with_workers(cluster.config, capacities, tuple(placements), free)


def _with_workers(config: "PimlConfig", capacities: list[NodeCapacity], services: tuple[Placement, ...], free: dict) -> Plan:
    notes: list[str] = []
    arches = sorted({c.arch for c in capacities})
    dask_pools: list[WorkerPool] = []
    if config.dask.enabled:
        # One worker per node, a quarter of what the node has left (at least MIN_WORKER_MEMORY).
        for arch in arches:
            here = [c for c in capacities if c.arch == arch and free[c.name][1] >= sizes.MIN_WORKER_MEMORY * 2]
            if not here:
                notes.append(f"no {arch} node has room for a Dask worker")
                continue
            memory = min(free[c.name][1] // 4 // 256 * 256 for c in here)
            memory = max(memory, sizes.MIN_WORKER_MEMORY)
            cpu = min(1000, min(free[c.name][0] // 2 for c in here))
            size = Size(cpu, memory, cpu * 2, memory).override(config.dask.worker)
            for c in here:
                free[c.name][0] -= size.cpu_request
                free[c.name][1] -= size.memory_request
            dask_pools.append(WorkerPool("dask", arch, size, len(here), tuple(c.name for c in here)))

    ray_pools: list[WorkerPool] = []
    if config.ray.enabled:
        # Autoscaled from zero: the maximum fills what is left, in 1 CPU / up to 2 GiB workers.
        for arch in arches:
            here = [c for c in capacities if c.arch == arch and free[c.name][1] >= sizes.MIN_WORKER_MEMORY]
            if not here:
                notes.append(f"no {arch} node has room for a Ray worker")
                continue
            memory = max(sizes.MIN_WORKER_MEMORY, min(2048, min(free[c.name][1] for c in here)) // 256 * 256)
            size = Size(1000, memory, 1000, memory).override(config.ray.worker)
            count = sum(min(free[c.name][1] // size.memory_request, max(1, free[c.name][0] // size.cpu_request)) for c in here)
            if count:
                ray_pools.append(WorkerPool("ray", arch, size, count, tuple(c.name for c in here)))

    runner = max_jobs = None
    if config.queue.enabled:
        runner = sizes.RUNNER_JOB.override(config.queue.resources)
        fit = sum(max(0, free[c.name][1]) // runner.memory_request for c in capacities)
        max_jobs = config.queue.max_jobs or max(1, fit)
    return Plan(tuple(capacities), services, tuple(dask_pools), tuple(ray_pools), runner, max_jobs or 0, tuple(notes))
