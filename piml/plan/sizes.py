"""Default container sizes, and the room each node keeps for the OS and k3s.

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

    def override(self, settings) -> "Size":
        """Apply a piml.yaml `Size` block (requests/limits with optional cpu/memory)."""
        if settings is None:
            return self
        req, lim = settings.requests, settings.limits
        return Size(
            cpu_m(req.cpu) if req.cpu else self.cpu_request,
            memory_mi(req.memory) if req.memory else self.memory_request,
            cpu_m(lim.cpu) if lim.cpu else self.cpu_limit,
            memory_mi(lim.memory) if lim.memory else self.memory_limit,
        )


# Platform services: requested always, so they decide whether the platform fits.
DEFAULTS = {
    "mlflow": Size(200, 512, 1000, 1024),
    "postgres": Size(100, 256, 500, 512),
    "minio": Size(100, 256, 500, 512),
    "redis": Size(50, 128, 250, 256),
    "rabbitmq": Size(200, 384, 1000, 768),
    "keda": Size(100, 320, 500, 640),  # operator + metrics server + admission webhooks
    "kuberay-operator": Size(50, 128, 200, 256),
    "ray-head": Size(250, 1024, 1000, 2048),  # runs no work (num-cpus 0): GCS, dashboard, autoscaler
    "dask-scheduler": Size(100, 256, 500, 1024),
}
# Workloads: sized per node from what the services leave.
RUNNER_JOB = Size(500, 1024, 1000, 2048)
MIN_WORKER_MEMORY = 512  # MiB: smaller Dask/Ray workers are not worth having

# Kept free on every node for the OS and k3s itself (MiB / millicores).
RESERVED = {"server": (1024, 500), "agent": (512, 250)}

# What a board has when no facts were gathered and the inventory declares no piml_memory_gb.
CPUS_BY_MODEL = {"pi5": 4, "cm4": 4}
FIRMWARE_SHARE = 0.03  # a board "with 8 GB" reports about 3% less to Linux
