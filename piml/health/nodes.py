"""Per-node health checks (`piml check`, the `verify` stage of `piml up`), with testinfra over SSH.

Each node gets testinfra's `ssh` backend (OpenSSH) with an ssh_config written for it, because only
OpenSSH gives strict host key checking against .piml/known_hosts (testinfra's paramiko backend adds
unknown keys by itself). The config also holds ONE multiplexed connection (ControlMaster) that all of
the node's checks reuse. Nodes run in parallel; a node's checks share one time budget, and a command
still running when it is spent is killed, so a hanging node costs at most `timeout`.

Rows (group "nodes", target = node name):
  reach           ssh login as the inventory says, host key known; on failure the node's only row
  k3s service     servers: k3s, agents: k3s-agent, running and enabled
  api port        servers: something listens on TCP 6443 (the Kubernetes API)
  memory cgroup   the memory controller is on (cgroup v2 or v1), k3s needs it
  throttling      `vcgencmd get_throttled` shows nothing happening now; skipped without vcgencmd
ray_external nodes do not run k3s: one skip row each and no SSH, so every node asked about shows up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from testinfra.backend.ssh import SshBackend
from testinfra.host import Host

from piml.facts.parsers import memory_cgroup, parse_proc_cgroups, parse_throttled
from piml.health.result import FAIL, SKIP, CheckFailed, CheckSkipped, Result, timed
from piml.inventory.model import Node, Role

if TYPE_CHECKING:
    from piml.project import Cluster

GROUP = "nodes"
API_PORT = 6443
MAX_PARALLEL = 32  # like the SSH fleet: enough for a rack, modest on threads and descriptors
RECORD_KEYS = "piml up --only preflight --accept-new-host-keys"
THROTTLE_WORDS = {"under_voltage": "under-voltage", "arm_freq_capped": "ARM frequency capped",
                  "throttled": "throttled", "soft_temp_limit": "soft temperature limit"}


def node_checks(cluster: Cluster, nodes: Iterable[Node], *, timeout: float = 20.0) -> list[Result]:
    """Per node, in parallel: rows with group="nodes", target=node name."""
    nodes = list(nodes)
    if not nodes:
        return []
    known_hosts = cluster.paths.known_hosts
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
        per_node = list(pool.map(lambda node: _check_node(node, known_hosts, timeout), nodes))
    return [row for rows in per_node for row in rows]


def _check_node(node: Node, known_hosts: Path, timeout: float) -> list[Result]:
    if node.role is Role.EXTERNAL:
        return [Result(GROUP, node.name, "k3s service", SKIP, "ray_external node: runs no k3s, not checked here")]
    try:
        with _Session(node, known_hosts, timeout) as host:
            reach = timed(GROUP, node.name, "reach", lambda: _reach(host))
            if reach.failed:
                return [reach]  # nothing else can be learnt, and one clear row beats five
            server = node.role is Role.SERVER
            rows = [reach, timed(GROUP, node.name, "k3s service", lambda: _service(host, "k3s" if server else "k3s-agent"))]
            if server:
                rows.append(timed(GROUP, node.name, "api port", lambda: _api_port(host)))
            rows.append(timed(GROUP, node.name, "memory cgroup", lambda: _memory_cgroup(host)))
            rows.append(timed(GROUP, node.name, "throttling", lambda: _throttling(host)))
            return rows
    except Exception as exc:  # noqa: BLE001 - e.g. no temp dir for the ssh_config: still a row, never a traceback
        return [Result(GROUP, node.name, "reach", FAIL, f"cannot set up SSH: {type(exc).__name__}: {exc}", "check the local machine (temp dir, ssh client)")]


# -- the checks (each returns its pass detail, or raises CheckFailed / CheckSkipped) ----------------

def _reach(host: Host) -> str:
    out = host.run("id -un")  # ssh's own failures raise CheckFailed in _BoundedSsh.run_local
    if out.rc != 0:
        raise CheckFailed(f"`id -un` failed (exit {out.rc}): {_first_line(out.stderr)}", "check the local ssh client and the node's shell")
    user = out.stdout.strip()
    host.backend.is_root = user == "root"
    return f"ssh as {user}, host key known"


def _service(host: Host, unit: str) -> str:
    service = host.service(unit)
    props = service.systemd_properties  # one `systemctl show`: tells a missing unit from a stopped one
    if props.get("LoadState") == "not-found":
        raise CheckFailed(f"no {unit}.service: k3s is not installed", "install it: piml up --only k3s")
    if service.is_masked:
        raise CheckFailed(f"{unit} is masked", f"on the node: sudo systemctl unmask {unit} && sudo systemctl enable --now {unit}")
    running, enabled = service.is_running, service.is_enabled
    if running and enabled:
        return f"{unit} running and enabled"
    problems = ([] if running else [f"not running ({props.get('ActiveState', '?')}/{props.get('SubState', '?')})"]) + \
               ([] if enabled else [f"not enabled ({props.get('UnitFileState', '?')}): it would not start at boot"])
    fix = f"on the node: sudo systemctl enable {unit}" if running else \
        f"on the node: sudo journalctl -u {unit} -n 50, then sudo systemctl enable --now {unit}"
    raise CheckFailed(f"{unit} " + "; ".join(problems), fix)


def _api_port(host: Host) -> str:
    # Any address counts: k3s listens on all of them unless --bind-address names one.
    listening = [s for s in host.socket.get_listening_sockets() if s.startswith("tcp://") and s.endswith(f":{API_PORT}")]
    if not listening:
        raise CheckFailed(f"nothing listens on TCP {API_PORT}: the Kubernetes API is down",
                          "on the node: sudo journalctl -u k3s -n 50")
    addresses = sorted({s[len("tcp://"):].rsplit(":", 1)[0] for s in listening})
    return f"{API_PORT} listening on " + ", ".join(addresses)


def _memory_cgroup(host: Host) -> str:
    unified = host.file("/sys/fs/cgroup/cgroup.controllers")
    controllers = tuple(unified.content_string.split()) if unified.exists else None
    proc = parse_proc_cgroups(host.file("/proc/cgroups").content_string) if controllers is None else {}
    version, on = memory_cgroup(controllers, proc)
    if on and version == 1 and not host.file("/sys/fs/cgroup/memory").is_directory:
        on = False  # enabled in the kernel but no hierarchy mounted: k3s still finds none
    if not on:
        raise CheckFailed(f"memory cgroup off (cgroup v{version or '?'}): k3s fails with 'failed to find memory cgroup'",
                          "add cgroup_enable=memory cgroup_memory=1 to /boot/firmware/cmdline.txt and reboot (piml up --only prepare does it)")
    return f"on (cgroup v{version})"


def _throttling(host: Host) -> str:
    if not host.exists("vcgencmd"):
        raise CheckSkipped("no vcgencmd: not a Raspberry Pi OS node")
    out = first = host.run("vcgencmd get_throttled")
    if out.rc != 0 and not host.backend.is_root:  # /dev/vcio is for the video group; sudo -n never prompts
        out = host.run("sudo -n vcgencmd get_throttled")
    if out.rc != 0:
        why = _first_line(first.stderr or first.stdout)
        if out is not first:
            why += f" (with sudo -n: {_first_line(out.stderr or out.stdout)})"
        raise CheckFailed(f"vcgencmd get_throttled failed: {why}", "add the user to the video group, or allow it passwordless sudo")
    state = parse_throttled(out.stdout)
    if state is None:
        raise CheckFailed("vcgencmd get_throttled printed nothing", "on the node: vcgencmd get_throttled")
    if state.now:
        raise CheckFailed(f"{hex(state.raw)}: now " + ", ".join(THROTTLE_WORDS.get(f, f) for f in state.now),
                          "use the official power supply and a cooler; check: vcgencmd get_throttled")
    since = f" (since boot: {', '.join(THROTTLE_WORDS.get(f, f) for f in state.since_boot)})" if state.since_boot else ""
    return f"{hex(state.raw)}: not throttled now{since}"


# -- SSH: testinfra's ssh backend, strict host keys, one connection, a deadline ----------------------

class _OutOfTime(CheckFailed):
    pass


class _BoundedSsh(SshBackend):
    """testinfra's `ssh` backend whose commands all end by the node's deadline (testinfra waits forever),
    and whose SSH errors become CheckFailed with the reason (testinfra raises RuntimeError(result))."""

    def __init__(self, node: Node, ssh_config: Path, known_hosts: Path, deadline: float, budget: float):
        address = f"[{node.address}]" if ":" in node.address else node.address  # testinfra's hostspec syntax
        # User, port and key are in the ssh_config; controlpersist=0: the config sets up multiplexing.
        super().__init__(address, ssh_config=str(ssh_config), timeout=_connect_timeout(budget), controlpersist=0)
        self.node, self.known_hosts, self.deadline, self.budget = node, known_hosts, deadline, budget
        self.is_root = False

    def run_local(self, command: str, *args: str):
        command = self.encode(self.quote(command, *args))
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._out_of_time()
        # Own session, so a timeout kills ssh too, not only the shell testinfra starts it with.
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise self._out_of_time() from None
        if proc.returncode == 255:  # ssh's own failure (the remote command's status otherwise)
            raise _ssh_failure(self.node, self.known_hosts, stderr.decode(errors="replace"))
        return self.result(proc.returncode, command, stdout, stderr)

    def _out_of_time(self) -> _OutOfTime:
        return _OutOfTime(f"no answer within {self.budget:g} s", "check that the node is up and not overloaded (uptime, free -m)")


class _Session:
    """A private temp dir holding the node's ssh_config and its ControlMaster socket; removed on exit."""

    def __init__(self, node: Node, known_hosts: Path, timeout: float):
        self.node, self.known_hosts, self.timeout = node, known_hosts, timeout

    def __enter__(self) -> Host:
        self.dir = Path(tempfile.mkdtemp(prefix="piml-check-"))  # 0700: only we can use the socket
        self.config = self.dir / "ssh_config"
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_ssh_config(self.node, self.known_hosts, self.dir / "cm", self.timeout))
        self.backend = _BoundedSsh(self.node, self.config, self.known_hosts, time.monotonic() + self.timeout, self.timeout)
        host = Host(self.backend)  # not testinfra.get_host: that caches hosts for the whole process
        self.backend.set_host(host)
        return host

    def __exit__(self, *exc) -> None:
        try:
            if (self.dir / "cm").exists():  # stop the master connection, else it lingers for ControlPersist
                subprocess.run(["ssh", "-F", str(self.config), "-O", "exit", self.backend.host.name],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _ssh_config(node: Node, known_hosts: Path, control_path: Path, timeout: float) -> str:
    """The inventory's settings and strict host keys first (the first value ssh reads wins), then the
    user's ~/.ssh/config for what the inventory leaves open, as the paramiko fleet does through fabric."""
    lines = ["# piml check: written for one run, then removed"]
    if node.user:
        lines.append(f"User {node.user}")
    if node.port:
        lines.append(f"Port {node.port}")
    if node.key_file:
        lines += [f"IdentityFile {_quoted(Path(node.key_file).absolute())}", "IdentitiesOnly yes"]
    lines += [
        "StrictHostKeyChecking yes",  # never add a key: recording keys is preflight's job, on request
        f"UserKnownHostsFile {_quoted(known_hosts.absolute())}",
        "GlobalKnownHostsFile /dev/null",  # only the project's file decides
        "UpdateHostKeys no", "CheckHostIP no", "BatchMode yes", "LogLevel ERROR",
        f"ConnectTimeout {_connect_timeout(timeout)}", "ServerAliveInterval 5", "ServerAliveCountMax 2",
        "ControlMaster auto", f"ControlPath {_quoted(control_path)}", "ControlPersist 60",
    ]
    user_config = Path.home() / ".ssh" / "config"
    if user_config.is_file():
        lines.append(f"Include {_quoted(user_config)}")
    return "\n".join(lines) + "\n"


def _ssh_failure(node: Node, known_hosts: Path, stderr: str) -> CheckFailed:
    """ssh's stderr -> what is wrong and how to fix it, in the words of the paramiko fleet."""
    from piml.ssh.hostkeys import host_entry_name

    text = " ".join(stderr.split())
    where = f"{node.address}:{node.port or 22}"
    if "IDENTIFICATION HAS CHANGED" in text:
        got = re.search(r"SHA256:[A-Za-z0-9+/]+", text)
        return CheckFailed(f"HOST KEY CHANGED: {where} now presents {got.group(0) if got else 'another key'}",
                           f"if the node was reinstalled, remove its line '{host_entry_name(node.address, node.port or 22)}' "
                           f"from {known_hosts}; otherwise someone may be intercepting")
    if "Host key verification failed" in text or "host key is known" in text:
        return CheckFailed(f"host key of {where} is not yet known (not in {known_hosts.parent.name}/{known_hosts.name})", f"check it, then run `{RECORD_KEYS}`")
    if "Permission denied" in text:
        key = f" with key {node.key_file}" if node.key_file else ""
        return CheckFailed(f"{node.user or 'the user'}@{where} refused our login{key}",
                           "put the project's public key (.piml/id_ed25519.pub) in ~/.ssh/authorized_keys on the node, or fix ansible_user / ansible_ssh_private_key_file")
    if "timed out" in text:
        return CheckFailed(f"no answer from {where} within the timeout", "check that the node is powered, booted and on the network")
    if "Connection refused" in text:
        return CheckFailed(f"{where} refused the connection", "check that sshd runs on the node and the port is right")
    if "No route to host" in text or "Network is unreachable" in text or "Could not resolve" in text:
        return CheckFailed(f"cannot reach {where}: {_first_line(stderr)}", "check the address and that the node is on the network")
    return CheckFailed(f"ssh to {where} failed: {_first_line(stderr) or 'exit status 255'}", "check that the node is up and its sshd healthy")


def _connect_timeout(budget: float) -> int:
    return max(1, min(10, int(budget / 2)))  # leave half the budget for the checks themselves


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("%", "%%") + '"'  # ssh_config expands %-tokens in these paths


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]
