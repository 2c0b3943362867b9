"""What runs a `ray_external` host's Ray worker: its `ray start` command, its environment, and the service that
keeps it running (a systemd unit on Linux, a launchd daemon plist on macOS). Rendered here, copied by
playbooks/ray-external.yml; nothing in them is secret (the token stays in its own 0600 file).

Why each setting, from Ray 2.60's code (docs/ray-external-design.md):
- `ray start --block` exits 1 after a clean SIGTERM (it drains, then sys.exit(1)), and exits 1 when the head goes
  away: the supervisor restarts it always, and systemd counts 1 as success.
- a joining worker must set RAY_AUTH_MODE=token itself (only `--head` turns it on from a token file).
- Ray compares Python versions to the patch by default; a host's 3.11.2 and the image's 3.11.x differ there, and
  cloudpickle needs only the minor to agree: RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor.
- macOS refuses to join a cluster unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and auto-detects the Apple GPU as
  GPU: 1 unless --num-gpus is given (CUDA tasks would land there): piml passes --num-gpus=0 when unset.
"""

from __future__ import annotations

import json
import plistlib
import shlex
from dataclasses import dataclass

from piml.inventory import Node

VENV = "/opt/piml-ray"  # root-owned: the worker's user runs it and cannot change it
TOKEN_FILE = "/etc/piml/ray-auth-token"  # 0600, owned by the worker's user
ENV_FILE = "/etc/piml/ray-worker.env"
SYSTEMD_UNIT = "/etc/systemd/system/piml-ray-worker.service"
LAUNCHD_LABEL = "io.piml.ray-worker"
LAUNCHD_PLIST = f"/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist"
LAUNCHD_LOG = "/var/log/piml-ray-worker.log"
LAUNCHD_ROUTES_LABEL = "io.piml.ray-routes"
HOST_LABEL = "piml.io/host"  # the Ray node label that names the inventory host (how piml finds it in the head)
DRAIN_S = 30  # Ray's own drain on SIGTERM (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S); the stop timeout allows it
RESTART_S = 10
GCS_RECONNECT_S = 600  # with GCS fault tolerance: as KubeRay sets it on its own workers


@dataclass(frozen=True)
class Head:
    """Where and how a worker joins: the head's GCS address as the hosts reach it, and what must match."""

    gcs_address: str  # host:port
    ray_version: str
    python: str  # the cluster's Python minor, "3.11"
    gcs_fault_tolerance: bool = False
    # (pod CIDR, node address) per k3s node: Ray's nodes call each other at their own addresses, and the
    # cluster's Ray pods advertise pod IPs, which a host outside the cluster reaches only through these routes
    routes: tuple[tuple[str, str], ...] = ()


def ip_block(node: Node) -> str | None:
    """The host's address as a NetworkPolicy ipBlock (/32 or /128), or None when the inventory gives a name."""
    import ipaddress

    try:
        address = ipaddress.ip_address(node.address)
    except ValueError:
        return None
    return f"{address}/{address.max_prefixlen}"


def start_args(node: Node, head: Head, system: str) -> list[str]:
    """`ray start`'s argv for this host (system: Linux or Darwin)."""
    worker = node.ray
    assert worker is not None, f"{node.name} is not a ray_external host"
    args = [f"{VENV}/bin/ray", "start", f"--address={head.gcs_address}", "--block", "--disable-usage-stats"]
    args.append(f"--labels={HOST_LABEL}={node.name}")
    if worker.num_cpus is not None:
        args.append(f"--num-cpus={worker.num_cpus}")
    num_gpus = worker.num_gpus if worker.num_gpus is not None else (0 if system == "Darwin" else None)
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    if worker.memory_gb is not None:
        args.append(f"--memory={int(worker.memory_gb * 1024**3)}")
    if worker.resources:
        args.append(f"--resources={json.dumps(worker.resources, sort_keys=True, separators=(',', ':'))}")
    return args


def environment(head: Head, system: str) -> dict[str, str]:
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": TOKEN_FILE,
        "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if head.gcs_fault_tolerance:
        env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(GCS_RECONNECT_S)
    if system == "Darwin":
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
        env["PATH"] = f"{VENV}/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    return env


def env_file(head: Head) -> str:
    lines = ["# piml: the Ray worker's environment (no secrets: the token is in its own file)"]
    lines += [f"{key}={value}" for key, value in environment(head, "Linux").items()]
    return "\n".join(lines) + "\n"


def systemd_unit(node: Node, head: Head, user: str) -> str:
    command = " ".join(_systemd_quote(arg) for arg in start_args(node, head, "Linux"))
    # "+": as root, though the worker runs as `user`; "replace": a re-run or a moved podCIDR is no error
    routes = "".join(
        f"ExecStartPre=+/sbin/ip route replace {cidr} via {via}\nExecStopPost=+-/sbin/ip route del {cidr} via {via}\n"
        for cidr, via in head.routes
    )
    return f"""\
# piml: this host's Ray worker, joined to the cluster's Ray head ({head.gcs_address}). Written by piml up.
[Unit]
Description=piml Ray worker ({node.name})
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User={user}
EnvironmentFile={ENV_FILE}
{routes}ExecStart={command}
# `ray start --block` exits 1 on a clean stop and when the head goes away: restart it always
Restart=always
RestartSec={RESTART_S}
SuccessExitStatus=1
# SIGTERM to `ray start` only: it drains the node, then ends its own children
KillMode=mixed
TimeoutStopSec={DRAIN_S + 30}

[Install]
WantedBy=multi-user.target
"""


def launchd_plist(node: Node, head: Head, user: str) -> bytes:
    """A LaunchDaemon (runs without a login, as `user`), restarted whenever it exits."""
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": start_args(node, head, "Darwin"),
            "EnvironmentVariables": environment(head, "Darwin"),
            "UserName": user,
            "RunAtLoad": True,
            "KeepAlive": True,
            "ThrottleInterval": RESTART_S,
            "ExitTimeOut": DRAIN_S + 30,  # launchd's default 20 s would cut Ray's drain short
            "StandardOutPath": LAUNCHD_LOG,
            "StandardErrorPath": LAUNCHD_LOG,
        },
        sort_keys=True,
    )


def _systemd_quote(arg: str) -> str:
    """systemd splits ExecStart like a shell for quotes, and expands % and $: a JSON argument needs both kept."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    return arg if shlex.quote(arg) == arg else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launchd_routes_plist(head: Head) -> bytes | None:
    """macOS: the routes to the pods (see Head.routes) as a root LaunchDaemon run at boot; None without routes."""
    if not head.routes:
        return None
    commands = "; ".join(
        f"/sbin/route -n delete -net {cidr} >/dev/null 2>&1; /sbin/route -n add -net {cidr} {via}"
        for cidr, via in head.routes
    )
    return plistlib.dumps(
        {
            "Label": LAUNCHD_ROUTES_LABEL,
            "ProgramArguments": ["/bin/sh", "-c", commands],
            "RunAtLoad": True,
            "StandardOutPath": LAUNCHD_LOG,
            "StandardErrorPath": LAUNCHD_LOG,
        },
        sort_keys=True,
    )
