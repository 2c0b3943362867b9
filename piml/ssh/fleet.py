"""A fleet of SSH connections: one per node, opened in parallel, reused for the whole command.

Every host is accounted for: a host that cannot be reached, refuses our key, presents a changed
host key or wants a sudo password gets a Failure naming it; the other hosts carry on.
Connection settings come from the inventory first, then from the user's ~/.ssh/config (fabric).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko

from piml.inventory import Node
from piml.ssh import results as R
from piml.ssh.hostkeys import KnownHosts, UnknownHostKey, fingerprint, host_entry_name
from piml.ssh.results import CommandOutput, Failure, HostResult

MAX_PARALLEL = 32  # enough for a rack; keeps file descriptors and threads modest


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # TCP connect, SSH banner and authentication, each
    command: float = 60.0
    node: float | None = None  # per node, connecting and the command together: the command gets what is left


class Fleet:
    def __init__(self, nodes: Iterable[Node], known_hosts: KnownHosts, timeouts: Timeouts = Timeouts()):
        self.nodes = {n.name: n for n in nodes}
        self.known_hosts = known_hosts
        self.timeouts = timeouts
        self._connections: dict[str, Any] = {}  # fabric Connections
        self.failures: dict[str, Failure] = {}
        self._fabric_config = None  # built once: it reads ~/.ssh/config

    # -- connecting ----------------------------------------------------------------------------
    def _connect_one(self, node: Node) -> HostResult[None]:
        from fabric import Config, Connection

        if self._fabric_config is None:
            self._fabric_config = _fabric_config(Config)

        wait = self.timeouts.connect
        connect_kwargs: dict[str, Any] = {"banner_timeout": wait, "auth_timeout": wait}
        if node.key_file:
            connect_kwargs["key_filename"] = [str(node.key_file)]
        conn = Connection(
            host=node.address,
            user=node.user,
            port=node.port,
            config=self._fabric_config,
            connect_timeout=int(max(1, self.timeouts.connect)),
            connect_kwargs=connect_kwargs,
        )
        self.known_hosts.install(conn.client)
        port = int(conn.port or 22)
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - every way SSH can fail becomes a per-host Failure
            conn.close()
            return HostResult(node.name, failure=_classify(exc, node, port, self.known_hosts))
        self._connections[node.name] = conn
        return HostResult(node.name)

    # -- running ----------------------------------------------------------------------------
    def run(
        self,
        command: str,
        stdin: str | None = None,
        sudo: bool = False,
        names: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, HostResult[CommandOutput]]:
        """Run `command` on every node (or `names`), in parallel; `stdin` is fed to it.

        With sudo, `sudo -n` is used: a node whose sudo asks for a password fails clearly instead
        of hanging on a prompt.
        If a node has not been connected yet, its worker connects first, so each node starts its
        command as soon as its own connection is up (no waiting for the slowest handshake).
        A node that cannot be connected gets its connection failure as its result.
        """
        wanted = list(names) if names is not None else list(self.nodes)  # connecting happens in the workers
        targets = [self.nodes[n] for n in wanted if n in self.nodes]
        if sudo:
            command = _as_root(command)
        return self._parallel(
            lambda node: self._connect_and_run(node, command, stdin, sudo, timeout or self.timeouts.command), targets
        )

    def stream(
        self,
        name: str,
        command: str,
        sudo: bool,
        timeout: float,
        send: BinaryIO | None = None,
        receive: BinaryIO | None = None,
    ) -> HostResult[CommandOutput]:
        """Run `command` on one node with bytes in and out: `send` (a file) is its stdin, its stdout goes into
        `receive` (a file), not into the result; stderr is kept as text. For archives, which are not text."""
        return self._connect_and_run(
            self.nodes[name], _as_root(command) if sudo else command, send, sudo, timeout, receive
        )

    def _connect_and_run(
        self,
        node: Node,
        command: str,
        stdin: str | BinaryIO | None,
        sudo: bool,
        timeout: float,
        sink: BinaryIO | None = None,
    ) -> HostResult:
        if node.name in self.failures:
            return HostResult(node.name, failure=self.failures[node.name])
        started = time.monotonic()
        if node.name not in self._connections:
            connected = self._connect_one(node)
            if connected.failure is not None:
                self.failures[node.name] = connected.failure
                return connected
        if self.timeouts.node is not None:
            timeout = min(timeout, self.timeouts.node - (time.monotonic() - started))
            if timeout <= 0:
                took = f"{node.name}: connecting took all of {self.timeouts.node:g} s"
                return HostResult(node.name, failure=Failure(R.TIMEOUT, took, "check the node's load and its network"))
        return self._run_one(node, command, stdin, sudo, timeout, sink)

    def _run_one(
        self,
        node: Node,
        command: str,
        stdin: str | BinaryIO | None,
        sudo: bool,
        timeout: float,
        sink: BinaryIO | None = None,
    ) -> HostResult[CommandOutput]:
        client: paramiko.SSHClient = self._connections[node.name].client
        started, wall = time.monotonic(), time.time()
        channel = None
        try:
            channel = client.get_transport().open_session(timeout=min(self.timeouts.connect, timeout))
            channel.settimeout(timeout)
            channel.exec_command(command)
            if isinstance(stdin, str):
                channel.sendall(stdin.encode())
            elif stdin is not None:
                while chunk := stdin.read(1 << 20):
                    channel.sendall(chunk)  # bounded by channel.settimeout: a node that stops reading is a timeout
            channel.shutdown_write()
            stdout, stderr = _drain(channel, started + timeout, sink)
            code = channel.recv_exit_status()
            channel.close()
        except TimeoutError as exc:
            # What it printed so far stays readable: the facts script's first sections are whole.
            partial = None
            if isinstance(exc, _CutShort):
                partial = CommandOutput(-1, exc.stdout, exc.stderr, time.monotonic() - started, wall)
            if channel is not None:
                channel.close()
            return HostResult(
                node.name,
                value=partial,
                failure=Failure(
                    R.TIMEOUT,
                    f"{node.name}: command did not finish within {timeout:.0f} s",
                    "check the node's load, or raise the timeout",
                ),
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            return HostResult(
                node.name,
                failure=Failure(
                    R.UNREACHABLE,
                    f"{node.name}: connection lost ({exc or type(exc).__name__})",
                    "check that the node is up and on the network",
                ),
            )
        out = CommandOutput(code, stdout, stderr, time.monotonic() - started, wall)
        if sudo and code != 0 and "password is required" in stderr:
            return HostResult(
                node.name,
                failure=Failure(
                    R.SUDO,
                    f"{node.name}: sudo asks {node.user or 'the user'} for a password",
                    f"allow passwordless sudo: `echo '{node.user or 'USER'} ALL=(ALL) NOPASSWD:ALL' | sudo tee /etc/sudoers.d/010_piml`",
                ),
            )
        return HostResult(node.name, value=out)

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _parallel(self, work, nodes: list[Node]) -> dict:
        if not nodes:
            return {}
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
            return {r.node: r for r in pool.map(work, nodes)}


def login_user(node: Node) -> str:
    """The user SSH logs in as on `node`: the inventory's, else ~/.ssh/config's, else the local user (as ssh)."""
    if node.user:
        return node.user
    from fabric import Config, Connection

    return Connection(host=node.address, config=_fabric_config(Config)).user


def _fabric_config(config_class):
    # Read the user's ~/.ssh/config (Host aliases, User, Port, IdentityFile, ProxyJump) but no
    # project-level fabric/invoke files.
    return config_class(lazy=False, runtime_ssh_path=None)


def _drain(channel: paramiko.Channel, deadline: float, sink: BinaryIO | None = None) -> tuple[str, str]:
    """Read stdout and stderr until the remote end closes them (EOF), or the deadline passes.

    EOF, not the exit status, marks the end: sshd may send the exit status before the last data.
    With a `sink`, stdout goes there as it comes (an archive may not fit in memory) and "" is returned for it.
    """
    out, err = bytearray(), bytearray()
    while True:
        if time.monotonic() > deadline:
            raise _CutShort(out.decode(errors="replace"), err.decode(errors="replace"))
        progressed = False
        while channel.recv_ready():
            if sink is None:
                out += channel.recv(65536)
            else:
                sink.write(channel.recv(65536))
            progressed = True
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            progressed = True
        if (channel.eof_received or channel.closed) and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if not progressed:  # sleep until data, EOF or the deadline, not in a busy loop
            select.select([channel], [], [], min(0.5, max(0.0, deadline - time.monotonic())))
    return out.decode(errors="replace"), err.decode(errors="replace")


class _CutShort(TimeoutError):
    """The deadline passed: what the command printed until then."""

    def __init__(self, stdout: str, stderr: str):
        super().__init__("cut short")
        self.stdout, self.stderr = stdout, stderr


def _as_root(command: str) -> str:
    """`sudo -n`: a node whose sudo wants a password fails at once (recognised in _run_one), never hangs."""
    return f"sudo -n -- sh -c {_quote(command)}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _classify(exc: Exception, node: Node, port: int, known: KnownHosts) -> Failure:
    """Turn whatever connecting raised into one clear, per-node failure."""
    name, where = node.name, f"{node.address}:{port}"

    def failed(kind: str, reason: str, fix: str) -> Failure:
        return Failure(kind, f"{name}: {reason}", fix)

    if isinstance(exc, UnknownHostKey):
        return failed(
            R.HOST_KEY,
            f"host key {fingerprint(exc.key)} is not yet known",
            "check it, then rerun with --accept-new-host-keys to record it",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return failed(
            R.HOST_KEY,
            f"HOST KEY CHANGED: expected {fingerprint(exc.expected_key)}, got {fingerprint(exc.key)}",
            f"if the node was reinstalled, remove its line '{host_entry_name(node.address, port)}' from {known.path}; "
            "otherwise someone may be intercepting",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = f" with key {node.key_file}" if node.key_file else ""
        return failed(
            R.AUTH,
            f"{node.user or 'the user'}@{where} refused our login{key}",
            "put the project's public key (.piml/id_ed25519.pub) in ~/.ssh/authorized_keys on the node, "
            "or fix ansible_user / ansible_ssh_private_key_file",
        )
    if isinstance(exc, (FileNotFoundError, PermissionError)) and getattr(exc, "filename", None):
        return failed(
            R.AUTH, f"cannot read key file {exc.filename}", "fix ansible_ssh_private_key_file in the inventory"
        )
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return failed(
            R.UNREACHABLE,
            f"no answer from {where} within the timeout",
            "check that the node is powered, booted and on the network",
        )
    if isinstance(exc, ConnectionRefusedError):
        return failed(
            R.UNREACHABLE, f"{where} refused the connection", "check that sshd runs on the node and the port is right"
        )
    if isinstance(exc, socket.gaierror):
        return failed(R.UNREACHABLE, f"cannot resolve {node.address}", "use an IP address or fix DNS")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return failed(R.UNREACHABLE, f"cannot connect to {where}", "check that the node is up and sshd runs")
    if isinstance(exc, OSError):
        return failed(
            R.UNREACHABLE, f"cannot reach {where} ({exc.strerror or exc})", "check the address and the network"
        )
    if isinstance(exc, EOFError):  # paramiko: the other end closed the connection during the handshake
        return failed(
            R.UNREACHABLE,
            f"{where} closed the connection during the SSH handshake",
            "check that sshd is healthy on the node (its log: journalctl -u ssh) and that the port is SSH's",
        )
    if isinstance(exc, paramiko.SSHException):
        # paramiko glues its causes on ("...banner[Errno 104] Connection reset by peer"): one phrase is enough
        reason = str(exc).split("[Errno")[0].strip() or type(exc).__name__
        return failed(
            R.UNREACHABLE,
            f"SSH failed at {where}: {reason}",
            "check that sshd is healthy on the node and that the port is SSH's",
        )
    return failed(R.UNREACHABLE, f"{type(exc).__name__}: {exc}", "check the node")
