"""Place every platform service on a node and size the worker pools to fit what is left.

Inputs: the cluster model, plus facts when the nodes were reached (else the inventory's declared
`piml_memory_gb` and model), plus, against a live cluster, where the stateful services' volumes are
(piml/plan/pins.py). A service that fits nowhere is an error naming the node that came closest and by
how much, with the fixes a user has.

The arithmetic is Kubernetes' own: a node's allocatable is its capacity minus system-reserved, kube-reserved
and the hard eviction threshold (sizes.RESERVED, written into each node's k3s config as kubelet-arg), and what
k3s runs itself (sizes.K3S_PODS) is requested on the first server before any platform service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from piml.errors import InputError, Problem
from piml.inventory import Node, Role
from piml.plan import sizes
from piml.plan.pins import Pin
from piml.plan.quantities import fmt_cpu, fmt_memory
from piml.plan.sizes import Reservation, Size

if TYPE_CHECKING:
    from piml.config import PimlConfig
    from piml.facts.model import NodeFacts
    from piml.project import Cluster

# Which piml.yaml section switches each service off.
SECTION_OF = {
    "mlflow": "mlflow",
    "postgres": "mlflow",
    "minio": "mlflow",
    "dask-scheduler": "dask",
    "kuberay-operator": "ray",
    "ray-head": "ray",
    "ray-autoscaler": "ray",
    "redis": "queue",
    "rabbitmq": "queue",
    "keda": "queue",
    "serve-head": "serve",
    "serve-autoscaler": "serve",
}
SERVICES_LABEL = "piml.io/services"  # label nodes "true" to keep the platform services on them


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    arch: str
    role: str
    cpu: int  # allocatable millicores: capacity - system-reserved - kube-reserved
    memory: int  # allocatable MiB: capacity - system-reserved - kube-reserved - eviction-hard
    total_memory: int  # MiB the board has (MemTotal: the kubelet's capacity)
    source: str  # "facts" or "inventory"
    total_cpu: int = 0  # millicores the board has
    reservation: Reservation = sizes.RESERVED["agent"]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "role": self.role,
            "cpu": self.cpu,
            "memory": self.memory,
            "total_cpu": self.total_cpu,
            "total_memory": self.total_memory,
            "source": self.source,
            **self.reservation.as_dict(),
            "kubelet_args": self.reservation.kubelet_args(),
        }


@dataclass(frozen=True)
class Placement:
    component: str
    node: str
    arch: str
    size: Size
    pinned_by: str | None = None  # the PersistentVolumeClaim that keeps it on `node`


@dataclass(frozen=True)
class SystemPlacement:
    """A pod k3s runs itself, counted where it runs (requests only: piml does not size it)."""

    name: str
    node: str
    cpu_request: int
    memory_request: int


@dataclass(frozen=True)
class WorkerPool:
    kind: str  # dask | ray
    arch: str
    size: Size
    replicas: int  # dask: running workers; ray: the autoscaler's maximum
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class WorkSplit:
    """How what the services and Dask workers leave is shared between Ray's workers and the queue's Jobs."""

    ray: float  # share of each node's free CPU and memory
    queue: float
    ray_cpu: int = 0  # millicores, summed over the nodes
    ray_memory: int = 0  # MiB
    queue_cpu: int = 0
    queue_memory: int = 0

    RULE = (
        "after the platform services, k3s's own pods and the Dask workers, each node's free CPU and memory is "
        "split: a share for Ray workers (the autoscaler's maximum), the rest for queue Jobs (max_jobs); "
        "one of them switched off, the other takes it all"
    )

    def as_dict(self) -> dict:
        return {
            "rule": self.RULE,
            "ray_share": self.ray,
            "queue_share": self.queue,
            "ray": {"cpu_m": self.ray_cpu, "memory_mi": self.ray_memory},
            "queue": {"cpu_m": self.queue_cpu, "memory_mi": self.queue_memory},
        }


@dataclass(frozen=True)
class Plan:
    nodes: tuple[NodeCapacity, ...]
    services: tuple[Placement, ...]
    dask_workers: tuple[WorkerPool, ...] = ()
    ray_workers: tuple[WorkerPool, ...] = ()
    runner: Size | None = None
    max_jobs: int = 0
    notes: tuple[str, ...] = field(default=())
    system: tuple[SystemPlacement, ...] = ()
    split: WorkSplit | None = None
    pins: tuple[Pin, ...] = ()
    serve_workers: tuple[WorkerPool, ...] = ()  # one pod per serving replica, room kept for every route's maximum

    def placement(self, component: str) -> Placement | None:
        return next((p for p in self.services if p.component == component), None)

    def used(self, node: str) -> tuple[int, int]:
        """(millicores, MiB) the services and k3s's own pods request on `node`."""
        cpu = sum(p.size.cpu_request for p in self.services if p.node == node)
        memory = sum(p.size.memory_request for p in self.services if p.node == node)
        cpu += sum(s.cpu_request for s in self.system if s.node == node)
        memory += sum(s.memory_request for s in self.system if s.node == node)
        return cpu, memory

    @property
    def services_memory(self) -> int:
        return sum(p.size.memory_request for p in self.services)

    @property
    def system_memory(self) -> int:
        return sum(s.memory_request for s in self.system)

    @property
    def total_memory(self) -> int:
        return sum(n.total_memory for n in self.nodes)

    @property
    def workload_share(self) -> float:
        """Share of the boards' memory left for workloads (not the OS, k3s, its pods or platform services)."""
        allocatable = sum(n.memory for n in self.nodes)
        left = allocatable - self.services_memory - self.system_memory
        return left / self.total_memory if self.total_memory else 0.0

    def as_dict(self) -> dict:
        def size(s: Size) -> dict:
            return {
                "requests": {"cpu_m": s.cpu_request, "memory_mi": s.memory_request},
                "limits": {"cpu_m": s.cpu_limit, "memory_mi": s.memory_limit},
            }

        return {
            "nodes": [
                {**n.as_dict(), "services_cpu_m": self.used(n.name)[0], "services_memory_mi": self.used(n.name)[1]}
                for n in self.nodes
            ],
            "services": [
                {
                    "component": p.component,
                    "node": p.node,
                    "arch": p.arch,
                    **size(p.size),
                    **({"pinned_by": p.pinned_by} if p.pinned_by else {}),
                }
                for p in self.services
            ],
            "k3s_pods": [
                {"name": s.name, "node": s.node, "requests": {"cpu_m": s.cpu_request, "memory_mi": s.memory_request}}
                for s in self.system
            ],
            "dask_workers": [
                {"arch": w.arch, "replicas": w.replicas, "nodes": list(w.nodes), **size(w.size)}
                for w in self.dask_workers
            ],
            "ray_workers": [
                {"arch": w.arch, "max_replicas": w.replicas, "nodes": list(w.nodes), **size(w.size)}
                for w in self.ray_workers
            ],
            "serve_workers": [
                {"arch": w.arch, "max_replicas": w.replicas, "nodes": list(w.nodes), **size(w.size)}
                for w in self.serve_workers
            ],
            "runner": {"max_jobs": self.max_jobs, **size(self.runner)} if self.runner else None,
            "work_split": self.split.as_dict() if self.split else None,
            "pins": [p.as_dict() for p in self.pins],
            "services_memory_mi": self.services_memory,
            "k3s_pods_memory_mi": self.system_memory,
            "workload_share": round(self.workload_share, 3),
            "notes": list(self.notes),
        }


def platform_services(config: PimlConfig) -> list[tuple[str, Size]]:
    """The services the settings switch on, each with its size (defaults, then piml.yaml)."""
    d = sizes.DEFAULTS
    wanted: list[tuple[str, Size]] = []
    if config.mlflow.enabled:
        wanted.append(("mlflow", d["mlflow"].override(config.mlflow.resources)))
        if config.mlflow.backend == "postgresql" and not config.mlflow.backend_uri:
            wanted.append(("postgres", d["postgres"]))
        if config.mlflow.artifacts == "minio" and not config.mlflow.artifacts_uri:
            wanted.append(("minio", d["minio"]))
        if config.backup.schedule:
            wanted.append(("mlflow-backup", d["mlflow-backup"]))
    if config.dask.enabled:
        wanted.append(("dask-scheduler", d["dask-scheduler"].override(config.dask.scheduler)))
    if config.ray.enabled:
        wanted += [
            ("kuberay-operator", d["kuberay-operator"]),
            ("ray-head", d["ray-head"].override(config.ray.head)),
            ("ray-autoscaler", d["ray-autoscaler"]),
        ]
    redis_needed = (config.queue.enabled and config.queue.kind == "redis") or (
        config.ray.enabled and config.ray.gcs_fault_tolerance
    )
    if redis_needed:
        wanted.append(("redis", d["redis"]))
    if config.queue.enabled:
        if config.queue.kind == "rabbitmq":
            wanted.append(("rabbitmq", d["rabbitmq"]))
        wanted.append(("keda", d["keda"]))
    if config.serve.enabled:
        wanted += [
            ("serve-head", d["serve-head"].override(config.serve.head)),
            ("serve-autoscaler", d["serve-autoscaler"]),
        ]
    return wanted


def serving_pod(config: PimlConfig) -> Size:
    """The Ray worker pod of one serving replica: the largest route's replica plus what Ray runs beside it."""
    from piml.plan.quantities import cpu_m, memory_mi

    routes = config.serve.routes.values()
    cpu = max(cpu_m(r.cpu) for r in routes) + sizes.SERVE_POD_OVERHEAD.cpu_request
    memory = max(memory_mi(r.memory) for r in routes) + sizes.SERVE_POD_OVERHEAD.memory_request
    return Size(cpu, memory, max(1000, cpu), memory)


def _serve_pools(config: PimlConfig, capacities: list[NodeCapacity], free: dict) -> tuple[WorkerPool, ...]:
    """Room for every route's max_replicas, one pod each, and for the deep check's route (apps.CHECK_ROUTE), taken
    from `free` on the roomiest nodes first (online serving is kept its maximum, as the Dask workers are: a burst of
    batch work must not starve it)."""
    from piml.serve.apps import CHECK_REPLICAS

    size = serving_pod(config)
    too_big(size, capacities, "serve.routes", "a serving replica's pod")
    wanted = sum(r.max_replicas for r in config.serve.routes.values()) + CHECK_REPLICAS
    placed: dict[str, int] = {}
    for _ in range(wanted):
        fitting = [
            c for c in capacities if free[c.name][1] >= size.memory_request and free[c.name][0] >= size.cpu_request
        ]
        if not fitting:
            raise InputError(
                Problem(
                    "piml.yaml",
                    f"serve needs room for {wanted} replica pods (the routes' max_replicas, and {CHECK_REPLICAS} for "
                    f"`piml check --deep`) of "
                    f"{fmt_cpu(size.cpu_request)} CPU, {fmt_memory(size.memory_request)} each, and only "
                    f"{sum(placed.values())} fit after the services and Dask workers",
                    "lower max_replicas or the routes' cpu/memory, switch a component off, or add a node",
                )
            )
        node = max(fitting, key=lambda c: free[c.name][1])
        free[node.name][0] -= size.cpu_request
        free[node.name][1] -= size.memory_request
        placed[node.name] = placed.get(node.name, 0) + 1
    pools = []
    for arch in sorted({c.arch for c in capacities}):
        here = [c.name for c in capacities if c.arch == arch and c.name in placed]
        if here:
            pools.append(WorkerPool("serve", arch, size, sum(placed[n] for n in here), tuple(here)))
    return tuple(pools)


def reservation(node: Node) -> Reservation:
    """What the kubelet on `node` keeps from pods (the plan subtracts it; the k3s stage writes it as kubelet-arg)."""
    return sizes.RESERVED["server" if node.role is Role.SERVER else "agent"]


def kubelet_args(cluster: Cluster) -> dict[str, list[str]]:
    """{node: kubelet-arg entries} for every k3s node: the reservations the plan counts on."""
    return {node.name: reservation(node).kubelet_args() for node in cluster.inventory.cluster_nodes}


def node_capacity(node: Node, facts: NodeFacts | None) -> NodeCapacity | Problem:
    memory = cpus = arch = None
    source = "facts" if facts is not None else "inventory"
    if facts is not None:
        memory, cpus, arch = facts.memory_total_mb, facts.cpu_count, facts.arch
    if memory is None and node.memory_gb:
        memory = int(node.memory_gb * 1024 * (1 - sizes.FIRMWARE_SHARE))
    cpus = cpus or node.cpus or sizes.CPUS_BY_MODEL.get(node.model or "")
    arch = arch if arch in ("arm64", "amd64") else node.arch
    if memory is None or cpus is None or arch is None:
        missing = ", ".join(
            k
            for k, v in (
                ("memory (piml_memory_gb)", memory),
                ("CPUs (piml_cpus)", cpus),
                ("architecture (piml_arch)", arch),
            )
            if v is None
        )
        return Problem(
            node.where or node.name,
            f"cannot size node '{node.name}': its {missing} is unknown",
            "let piml reach it (piml plan --reach), or declare it in the inventory",
        )
    reserved = reservation(node)
    return NodeCapacity(
        node.name,
        arch,
        str(node.role),
        cpus * 1000 - reserved.cpu,
        memory - reserved.memory,
        memory,
        source,
        cpus * 1000,
        reserved,
    )


def k3s_pods(cluster: Cluster) -> list[SystemPlacement]:
    """k3s's packaged pods that are not disabled, on the first server (k3s starts them before others join)."""
    first = cluster.inventory.servers[0].name
    disabled = set(cluster.config.k3s.disable)  # what the k3s stage passes as --disable
    return [
        SystemPlacement(p.name, first, p.cpu_request, p.memory_request)
        for p in sizes.K3S_PODS
        if p.disable not in disabled
    ]


def make_plan(cluster: Cluster, facts: dict[str, NodeFacts] | None = None, pins: dict[str, Pin] | None = None) -> Plan:
    """The plan. `pins` (component -> Pin, from pins.read_pins) keeps stateful services on their volume's node:
    one whose node is gone or too small is an error saying so, never a silent move."""
    facts = facts or {}
    pins = pins or {}
    problems: list[Problem] = []
    capacities: list[NodeCapacity] = []
    nodes = cluster.inventory.cluster_nodes
    for node in nodes:
        result = node_capacity(node, facts.get(node.name))
        (problems.append if isinstance(result, Problem) else capacities.append)(result)
    if problems:
        raise InputError(problems)

    by_name = {n.name: n for n in nodes}
    capacity_of = {c.name: c for c in capacities}
    # A NoSchedule / NoExecute taint from the inventory keeps the platform's pods off that node: none of them
    # tolerates it, and the scheduler would leave whatever the plan put there Pending.
    keep_off = {n.name: t for n in nodes for t in n.taints if t.effect in ("NoSchedule", "NoExecute")}
    usable = [c for c in capacities if c.name not in keep_off]
    if not usable:
        raise InputError(
            Problem(
                cluster.inventory.servers[0].where or "inventory",
                "every node has a NoSchedule or NoExecute taint (piml_taints): the platform has nowhere to run",
                "leave at least one node without such a taint",
            )
        )
    labelled = [c for c in usable if by_name[c.name].labels.get(SERVICES_LABEL) == "true"]
    candidates = labelled or usable  # servers come first in the inventory order
    free = {c.name: [c.cpu, c.memory] for c in capacities}
    system = k3s_pods(cluster)
    for pod in system:
        free[pod.node][0] -= pod.cpu_request
        free[pod.node][1] -= pod.memory_request
    taint_notes = [
        f"{name} has the taint {taint}: the platform places nothing there" for name, taint in keep_off.items()
    ]
    for name in keep_off:  # nothing of the platform's fits there: not services, workers or queue Jobs
        free[name] = [0, 0]

    services = platform_services(cluster.config)
    sized = dict(services)
    together = {name: (*sizes.SIDECARS.get(name, ()), *sizes.BESIDE.get(name, ())) for name in sized}
    followers = {s for members in together.values() for s in members}
    # A unit is placed whole: a service, the sidecars in its pod, the pods that mount its volume.
    units = [
        (name, [name, *(s for s in together[name] if s in sized)]) for name, _ in services if name not in followers
    ]

    def total(members: list[str]) -> Size:
        out = Size(0, 0, 0, 0)
        for member in members:
            out = out + sized[member]
        return out

    def what_short(size: Size, node: str) -> str:
        short = size.memory_request - free[node][1]
        return f"{fmt_memory(short)} of memory" if short > 0 else f"{fmt_cpu(size.cpu_request - free[node][0])} of CPU"

    def label(name: str, members: list[str]) -> str:
        pod = [m for m in members[1:] if m not in sizes.BESIDE.get(name, ())]
        beside = [m for m in members[1:] if m in sizes.BESIDE.get(name, ())]
        return (
            name
            + (f" (with {', '.join(pod)} in its pod)" if pod else "")
            + (f" (with {', '.join(beside)} beside it)" if beside else "")
        )

    config_file = cluster.paths.show(cluster.paths.config)
    ns = cluster.config.namespace
    placements: list[Placement] = []

    def place(members: list[str], target: NodeCapacity, pinned_by: str | None = None) -> None:
        for member in members:
            size = sized[member]
            free[target.name][0] -= size.cpu_request
            free[target.name][1] -= size.memory_request
            placements.append(Placement(member, target.name, target.arch, size, pinned_by))

    def fits(size: Size, node: str) -> bool:
        return free[node][1] >= size.memory_request and free[node][0] >= size.cpu_request

    # Services whose data is on a node stay there: placed first, they have no choice.
    pinned = [(name, members, pins[name]) for name, members in units if name in pins]
    for name, members, pin in pinned:
        size = total(members)
        where = f"PersistentVolumeClaim {ns}/{pin.claim}"
        if pin.node not in capacity_of:
            problems.append(
                Problem(
                    where,
                    f"{name}'s data is on node {pin.node} (a local-path volume, tied to that node), "
                    f"which is not in the inventory: {name} cannot run anywhere else",
                    f"put {pin.node} back in the inventory and bring it up; or, to start {name} afresh on another node "
                    f"with its data lost, delete the claim (kubectl -n {ns} delete pvc {pin.claim}) and run piml again",
                )
            )
            continue
        if pin.node in keep_off:
            problems.append(
                Problem(
                    where,
                    f"{name}'s data is on node {pin.node} (a local-path volume, tied to that node), which now has "
                    f"the taint {keep_off[pin.node]}: {name} cannot run there, nor anywhere else",
                    f"remove that taint from {pin.node} in the inventory (piml_taints); or delete the claim "
                    f"(kubectl -n {ns} delete pvc {pin.claim}, its data is lost) to start {name} afresh elsewhere",
                )
            )
            continue
        if not fits(size, pin.node):
            problems.append(
                Problem(
                    where,
                    f"{label(name, members)} must stay on {pin.node}, where its volume {pin.claim} is, "
                    f"but {pin.node} is short by {what_short(size, pin.node)} for its {fmt_memory(size.memory_request)}",
                    f"make room on {pin.node}: give services smaller resources or switch one off in {config_file}, or label "
                    f"other nodes {SERVICES_LABEL}=true so the movable services go there; or delete the claim "
                    f"(kubectl -n {ns} delete pvc {pin.claim}, its data is lost) to start {name} afresh elsewhere",
                )
            )
            continue
        place(members, capacity_of[pin.node], pin.claim)

    # The rest: largest first onto the node with the most free memory (balances the load, fits more).
    others = [(name, members) for name, members in units if name not in pins]
    for name, members in sorted(others, key=lambda unit: -total(unit[1]).memory_request):
        size = total(members)
        fitting = [c for c in candidates if fits(size, c.name)]
        if not fitting:
            best = max(candidates, key=lambda c: free[c.name][1])
            problems.append(
                Problem(
                    config_file,
                    f"{label(name, members)} does not fit: it requests {fmt_memory(size.memory_request)}, "
                    f"and the roomiest node, {best.name}, is short by {what_short(size, best.name)}",
                    f"switch off a component in piml.yaml (e.g. `{SECTION_OF[name]}: {{enabled: false}}`), give it smaller resources, or add a node",
                )
            )
            continue
        place(members, max(fitting, key=lambda c: free[c.name][1]))
    if problems:
        raise InputError(problems)
    order = [name for name, _ in services]
    placements.sort(key=lambda p: order.index(p.component))
    used_pins = tuple(pins[name] for name, _, _ in pinned)
    return _with_workers(cluster.config, capacities, tuple(placements), free, tuple(system), used_pins, taint_notes)


def too_big(size: Size, nodes: list[NodeCapacity], setting: str, what: str) -> None:
    """Refuse a size no node could ever hold: the pod would wait (Pending) forever."""
    largest = max(nodes, key=lambda c: c.memory)
    if size.memory_request > largest.memory or size.cpu_request > max(c.cpu for c in nodes):
        raise InputError(
            Problem(
                "piml.yaml",
                f"{setting}: {what} requesting {fmt_cpu(size.cpu_request)} CPU, "
                f"{fmt_memory(size.memory_request)} fits on no node (the largest, {largest.name}, has "
                f"{fmt_cpu(largest.cpu)} CPU, {fmt_memory(largest.memory)} for pods)",
                f"lower {setting}.requests, or leave them out to have the plan size it",
            )
        )


def work_shares(config: PimlConfig) -> tuple[float, float]:
    """(Ray's share, the queue's share) of what is left for them (sizes.WORK_SPLIT when both are on)."""
    ray, queue = config.ray.enabled, config.queue.enabled
    if ray and queue:
        return sizes.WORK_SPLIT["ray"], sizes.WORK_SPLIT["queue"]
    return (1.0 if ray else 0.0), (1.0 if queue else 0.0)


def _with_workers(
    config: PimlConfig,
    capacities: list[NodeCapacity],
    services: tuple[Placement, ...],
    free: dict,
    system: tuple[SystemPlacement, ...],
    pins: tuple[Pin, ...],
    notes: list[str],
) -> Plan:
    arches = sorted({c.arch for c in capacities})
    dask_pools: list[WorkerPool] = []
    if config.dask.enabled:
        # One worker per node, a quarter of what the node has left (at least MIN_WORKER_MEMORY); always running.
        for arch in arches:
            here = [c for c in capacities if c.arch == arch and free[c.name][1] >= sizes.MIN_WORKER_MEMORY * 2]
            if not here:
                notes.append(f"no {arch} node has room for a Dask worker")
                continue
            memory = min(free[c.name][1] // 4 // 256 * 256 for c in here)
            memory = max(memory, sizes.MIN_WORKER_MEMORY)
            cpu = min(1000, min(free[c.name][0] // 2 for c in here))
            size = Size(cpu, memory, cpu * 2, memory).override(config.dask.worker)
            short = [
                c.name for c in here if size.memory_request > free[c.name][1] or size.cpu_request > free[c.name][0]
            ]
            if short:  # a worker runs on every node, always: one that cannot start is a plan that does not work
                raise InputError(
                    Problem(
                        "piml.yaml",
                        f"dask.worker: {fmt_cpu(size.cpu_request)} CPU, {fmt_memory(size.memory_request)} "
                        f"do not fit on {', '.join(short)} (left after the services: "
                        f"{fmt_cpu(free[short[0]][0])} CPU, {fmt_memory(free[short[0]][1])} on {short[0]})",
                        "lower dask.worker.requests, or leave them out to have the plan size the workers",
                    )
                )
            for c in here:
                free[c.name][0] -= size.cpu_request
                free[c.name][1] -= size.memory_request
            dask_pools.append(WorkerPool("dask", arch, size, len(here), tuple(c.name for c in here)))

    serve_pools = _serve_pools(config, capacities, free) if config.serve.enabled else ()

    # What is left is split once, so Ray's maximum and the queue's max_jobs can both be reached at the same time.
    ray_share, queue_share = work_shares(config)
    ray_free, queue_free = {}, {}
    for c in capacities:
        cpu, memory = max(0, free[c.name][0]), max(0, free[c.name][1])
        ray_free[c.name] = (int(cpu * ray_share), int(memory * ray_share))
        queue_free[c.name] = (
            (cpu - ray_free[c.name][0]) if queue_share else 0,
            (memory - ray_free[c.name][1]) if queue_share else 0,
        )
    split = None
    if ray_share or queue_share:
        split = WorkSplit(
            ray_share,
            queue_share,
            sum(v[0] for v in ray_free.values()),
            sum(v[1] for v in ray_free.values()),
            sum(v[0] for v in queue_free.values()),
            sum(v[1] for v in queue_free.values()),
        )

    ray_pools: list[WorkerPool] = []
    if config.ray.enabled:
        # Autoscaled from zero: the maximum fills Ray's share, in workers of one Ray CPU (limit 1000m; the request
        # smaller where the share is, at least MIN_WORKER_CPU) and up to 2 GiB.
        for arch in arches:
            here = [
                c
                for c in capacities
                if c.arch == arch
                and ray_free[c.name][1] >= sizes.MIN_WORKER_MEMORY
                and ray_free[c.name][0] >= sizes.MIN_WORKER_CPU
            ]
            if not here:
                notes.append(
                    f"no {arch} node has room for a Ray worker ({fmt_cpu(sizes.MIN_WORKER_CPU)} CPU, "
                    f"{fmt_memory(sizes.MIN_WORKER_MEMORY)}) in Ray's share of what is left"
                )
                continue
            memory = max(sizes.MIN_WORKER_MEMORY, min(2048, min(ray_free[c.name][1] for c in here)) // 256 * 256)
            cpu = max(sizes.MIN_WORKER_CPU, min(1000, min(ray_free[c.name][0] for c in here) // 50 * 50))
            size = Size(cpu, memory, 1000, memory).override(config.ray.worker)
            too_big(size, [c for c in capacities if c.arch == arch], "ray.worker", "a Ray worker")
            count = sum(
                min(ray_free[c.name][1] // size.memory_request, ray_free[c.name][0] // max(1, size.cpu_request))
                for c in here
            )
            if count:
                ray_pools.append(WorkerPool("ray", arch, size, count, tuple(c.name for c in here)))
            else:
                notes.append(
                    f"no {arch} node has the CPU for a Ray worker ({fmt_cpu(size.cpu_request)}) in Ray's share of what is left"
                )

    runner = max_jobs = None
    if config.queue.enabled:
        runner = sizes.RUNNER_JOB.override(config.queue.resources)
        too_big(runner, capacities, "queue.resources", "a queue Job")
        fit = sum(min(m // runner.memory_request, c // max(1, runner.cpu_request)) for c, m in queue_free.values())
        if config.queue.max_jobs:
            max_jobs = config.queue.max_jobs
            if max_jobs > fit:
                notes.append(
                    f"queue.max_jobs is {max_jobs}, but {fit} Jobs fit in the queue's share: the others wait (Pending) for room"
                )
        else:
            max_jobs = max(1, fit)
            if not fit:
                notes.append(
                    "no node has room for a queue Job in the queue's share: one at a time, and it may wait (Pending) for room"
                )
    return Plan(
        tuple(capacities),
        services,
        tuple(dask_pools),
        tuple(ray_pools),
        runner,
        max_jobs or 0,
        tuple(notes),
        system,
        split,
        pins,
        serve_pools,
    )
