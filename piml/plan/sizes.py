"""Default container sizes, the room each node keeps for the OS and k3s, and what k3s itself runs.

Sized for 4-8 GB boards from what these services use idle plus headroom; every one can be
overridden in piml.yaml (e.g. `mlflow: {resources: {limits: {memory: 2Gi}}}`).
"""

from __future__ import annotations

from dataclasses import dataclass

from piml.plan.quantities import cpu_m, memory_mi


@dataclass(frozen=True)
class Size:
    cpu_request: int  # millicores
    memory_request: int  # MiB
    cpu_limit: int
    memory_limit: int

    def override(self, settings) -> Size:
        """Apply a piml.yaml `Size` block (requests/limits with optional cpu/memory). A request set above the
        limit piml would give raises that limit to it (Kubernetes refuses a request above its limit); piml.config
        refuses a request above a limit that piml.yaml sets too."""
        if settings is None:
            return self
        req, lim = settings.requests, settings.limits
        cpu_request = cpu_m(req.cpu) if req.cpu else self.cpu_request
        memory_request = memory_mi(req.memory) if req.memory else self.memory_request
        cpu_limit = cpu_m(lim.cpu) if lim.cpu else max(self.cpu_limit, cpu_request)
        memory_limit = memory_mi(lim.memory) if lim.memory else max(self.memory_limit, memory_request)
        return Size(cpu_request, memory_request, cpu_limit, memory_limit)

    def __add__(self, other: Size) -> Size:
        return Size(
            self.cpu_request + other.cpu_request,
            self.memory_request + other.memory_request,
            self.cpu_limit + other.cpu_limit,
            self.memory_limit + other.memory_limit,
        )


# Platform services: requested always, so they decide whether the platform fits.
DEFAULTS = {
    "mlflow": Size(200, 512, 1000, 1024),
    "postgres": Size(100, 256, 500, 512),
    "minio": Size(100, 256, 500, 512),
    "redis": Size(50, 128, 250, 256),
    "rabbitmq": Size(200, 384, 1000, 768),
    "keda": Size(100, 320, 500, 640),  # operator + metrics server + admission webhooks
    # The kuberay-operator chart 1.7.0 sets limits {cpu: 100m, memory: 512Mi} (requests default to them); piml's
    # valuesContent replaces that block, so the memory limit must not drop below the chart's 512Mi.
    "kuberay-operator": Size(100, 256, 500, 512),
    "ray-head": Size(250, 1024, 1000, 2048),  # runs no work (num-cpus 0): GCS, dashboard
    # The autoscaler sidecar KubeRay adds to the head pod (enableInTreeAutoscaling); rendered from here into
    # autoscalerOptions.resources (KubeRay's own default would be 500m / 512Mi requests = limits).
    "ray-autoscaler": Size(100, 256, 500, 512),
    "dask-scheduler": Size(100, 256, 500, 1024),
    # Online serving's own Ray head (a RayService makes its own cluster): GCS, dashboard, the Serve controller
    # and an HTTP proxy; no replica (num-cpus 0). Its autoscaler sidecar is sized as the batch head's.
    "serve-head": Size(250, 1024, 1000, 2048),
    "serve-autoscaler": Size(100, 256, 500, 512),
    # The scheduled backup's Job pod (backup.schedule): SQLite's online copy and a gzip of the artifacts.
    "mlflow-backup": Size(100, 128, 500, 256),
}
# Containers that share a pod with another service: placed on its node, counted there.
SIDECARS = {"ray-head": ("ray-autoscaler",), "serve-head": ("serve-autoscaler",)}
# Pods that mount another service's volume: placed on its node and counted there, so they are never left Pending
# (a local-path volume is on one node).
BESIDE = {"mlflow": ("mlflow-backup",)}
KUBERAY_CHART_MEMORY_LIMIT = 512  # MiB: the chart's default; the operator never gets less

# Workloads: sized per node from what the services leave.
RUNNER_JOB = Size(500, 1024, 1000, 2048)
MIN_WORKER_MEMORY = 512  # MiB: smaller Dask/Ray workers are not worth having
MIN_WORKER_CPU = 250  # millicores a Ray worker requests at least
# A serving replica gets a Ray worker pod of its own: the replica's CPU and memory (piml.yaml serve.routes) plus
# what Ray runs beside it there (raylet, agents, Serve's Python proxy, and in HAProxy mode HAProxy and its manager
# actor: about 400 MB PSS measured beside a replica on a local Ray 2.60; a small object store, rendered so).
SERVE_POD_OVERHEAD = Size(100, 512, 0, 512)
SERVE_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's floor is 75 MiB; a serving node passes rows, not objects
# What is left after the services and the (always running) Dask workers is split between the Ray workers'
# autoscaling maximum and the queue's Jobs, memory and CPU alike, so the two can run at their maximum together.
# One of them switched off: the other takes it all.
WORK_SPLIT = {"ray": 0.5, "queue": 0.5}


@dataclass(frozen=True)
class Reservation:
    """What the kubelet keeps from pods on a node: `capacity - system - kube - eviction` is its allocatable."""

    system_cpu: int  # millicores: the OS (sshd, journald, ...)
    system_memory: int  # MiB
    kube_cpu: int  # k3s itself: API server, etcd / kine, kubelet, containerd, flannel in one process
    kube_memory: int
    eviction_memory: int  # the hard eviction threshold memory.available

    @property
    def cpu(self) -> int:
        return self.system_cpu + self.kube_cpu

    @property
    def memory(self) -> int:
        return self.system_memory + self.kube_memory + self.eviction_memory

    def kubelet_args(self) -> list[str]:
        """k3s `kubelet-arg` entries that make the kubelet reserve exactly this.

        A kubelet flag replaces the whole map k3s sets in its config drop-in, so eviction-hard repeats k3s's own
        disk thresholds (imagefs/nodefs.available<5%, k3s pkg/daemons/agent/agent.go)."""
        return [
            f"system-reserved=cpu={self.system_cpu}m,memory={self.system_memory}Mi",
            f"kube-reserved=cpu={self.kube_cpu}m,memory={self.kube_memory}Mi",
            f"eviction-hard=memory.available<{self.eviction_memory}Mi,{K3S_DISK_EVICTION}",
        ]

    def as_dict(self) -> dict:
        return {
            "system_reserved": {"cpu_m": self.system_cpu, "memory_mi": self.system_memory},
            "kube_reserved": {"cpu_m": self.kube_cpu, "memory_mi": self.kube_memory},
            "eviction_hard": {"memory_mi": self.eviction_memory},
        }


K3S_DISK_EVICTION = "imagefs.available<5%,nodefs.available<5%"
# Kept from pods on every node, by role (a server also runs the control plane and the datastore).
RESERVED = {"server": Reservation(250, 256, 250, 512, 256), "agent": Reservation(100, 128, 150, 256, 128)}


@dataclass(frozen=True)
class SystemPod:
    """A pod k3s deploys itself (its packaged components), with the requests k3s's manifest gives it."""

    name: str
    disable: str  # the k3s `--disable` name that switches it off
    cpu_request: int
    memory_request: int


# k3s v1.36.3+k3s1 manifests/: coredns.yaml (requests 100m / 70Mi, limit 170Mi), metrics-server-deployment.yaml
# (requests 100m / 70Mi), local-storage.yaml (no resources), traefik.yaml (values without resources; the chart's
# default is none). They start on the first server, before any other node has joined.
K3S_PODS = (
    SystemPod("coredns", "coredns", 100, 70),
    SystemPod("metrics-server", "metrics-server", 100, 70),
    SystemPod("traefik", "traefik", 0, 0),
    SystemPod("local-path-provisioner", "local-storage", 0, 0),
)

# What a board has when no facts were gathered and the inventory declares no piml_memory_gb.
CPUS_BY_MODEL = {"pi5": 4, "cm4": 4}
FIRMWARE_SHARE = 0.03  # a board "with 8 GB" reports about 3% less to Linux
