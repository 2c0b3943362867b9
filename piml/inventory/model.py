"""The validated model of the cluster's nodes, as read from the inventory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from piml.errors import Problem


class Role(StrEnum):
    SERVER = "server"  # k3s server (control plane, etcd when several)
    AGENT = "agent"  # k3s agent
    EXTERNAL = "external"  # outside Kubernetes, joins Ray as a worker (group `ray_external`)


MODELS = ("pi5", "cm4", "other")
ARCHES = ("arm64", "amd64")
STORAGE_KINDS = ("sd", "emmc", "nvme", "usb")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class RayWorker:
    """What a `ray_external` host offers the cluster's Ray (its `ray start` flags), from its piml_ray_* variables.
    None leaves the count to Ray (it detects CPUs, GPUs and memory itself)."""

    resources: dict[str, int] = field(default_factory=dict)  # custom resources, e.g. {"gpu_apple_mps": 1}
    num_cpus: int | None = None
    num_gpus: int | None = None
    memory_gb: float | None = None  # for Ray's tasks and actors (`ray start --memory`, in bytes)
    python: str | None = None  # "3.11" or "3.11.7"; None: the Ray image's own

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Node:
    name: str  # inventory host name; also the node's host name and Kubernetes node name
    address: str  # where to reach it: ansible_host, else the name
    role: Role
    user: str | None = None  # None: ~/.ssh/config or the local user decides
    port: int | None = None  # None: ~/.ssh/config or 22
    key_file: Path | None = None
    model: str | None = None  # pi5 | cm4 | other; None until facts tell
    arch: str | None = None  # arm64 | amd64; implied by the model for Pis
    memory_gb: float | None = None  # declared, for planning when the node cannot be reached
    cpus: int | None = None  # declared likewise; Pis imply 4
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    storage: str | None = None  # sd | emmc | nvme | usb
    ray: RayWorker | None = None  # ray_external hosts only: what they offer Ray
    vars: dict[str, Any] = field(default_factory=dict, repr=False)  # every variable the host ends up with
    where: str = ""  # file:line of its entry, for messages

    def as_dict(self) -> dict[str, Any]:
        """The node for `--json`: no variables (they may hold secrets such as the k3s token)."""
        return {
            "name": self.name,
            "address": self.address,
            "role": str(self.role),
            "user": self.user,
            "port": self.port,
            "model": self.model,
            "arch": self.arch,
            "memory_gb": self.memory_gb,
            "cpus": self.cpus,
            "storage": self.storage,
            "labels": dict(self.labels),
            "taints": [str(t) for t in self.taints],
            **({"ray": self.ray.as_dict()} if self.ray is not None else {}),
        }


@dataclass(frozen=True)
class K3sVars:
    """The k3s-ansible variables piml reads itself (group vars of `all` / `k3s_cluster`), typed and checked by
    piml.inventory.validate with file:line errors. Ansible reads the inventory too, with these and the rest."""

    k3s_version: str | None = None  # 'v1.36.3+k3s1'
    token: str | None = None
    api_endpoint: str | None = None  # a literal host or address; a Jinja template is Ansible's business (None here)
    api_port: int = 6443
    airgap_dir: str | None = None
    extra_server_args: str = ""
    extra_agent_args: str = ""


@dataclass(frozen=True)
class Inventory:
    path: Path
    source: str  # the path as shown in messages
    nodes: tuple[Node, ...]
    k3s_vars: K3sVars = field(default_factory=K3sVars, repr=False)  # k3s-ansible settings, cluster-wide
    warnings: tuple[Problem, ...] = ()

    def by_role(self, role: Role) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role is role)

    @property
    def servers(self) -> tuple[Node, ...]:
        return self.by_role(Role.SERVER)

    @property
    def agents(self) -> tuple[Node, ...]:
        return self.by_role(Role.AGENT)

    @property
    def external(self) -> tuple[Node, ...]:
        return self.by_role(Role.EXTERNAL)

    @property
    def cluster_nodes(self) -> tuple[Node, ...]:
        """Nodes that run k3s: servers first, then agents."""
        return self.servers + self.agents

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def api_endpoint(self) -> str:
        """The address agents and kubectl use: `api_endpoint` when set literally, else the first server."""
        return self.k3s_vars.api_endpoint or self.servers[0].address
