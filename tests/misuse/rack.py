"""A rack of loopback tripwires for the misuse tests: a project whose nodes are listeners that count who knocks
and hang up at once. An SSH client, piml's or Ansible's, fails there before it could log in, so nothing is ever
changed, and the count says whether a command reached for the nodes at all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import yaml

PROJECT = "rack"
OTHER_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: 'https://127.0.0.1:1'}
- name: rack
  cluster: {server: 'https://127.0.0.1:2'}
contexts:
- name: other
  context: {cluster: other, user: other}
- name: rack
  context: {cluster: rack, user: rack}
users:
- name: other
  user: {token: other-token}
- name: rack
  user: {token: rack-token}
current-context: other
"""


class LoopbackListener:
    """A listener on a loopback address (a free port) whose thread hands every connection to `handle`."""

    def __init__(self, address: str = "127.0.0.1"):
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.address, self.port = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}-{address}", daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():  # bounded: close() sets it, and accept() wakes every 0.2 s
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.handle(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Tripwire(LoopbackListener):
    """Accepts a connection, counts it and closes it at once."""

    knocks = 0

    def handle(self, conn: socket.socket) -> None:
        self.knocks += 1
        conn.close()


class Rack:
    """A project whose server s1, agent a1 and ray_external host mac are tripwires on 127.0.0.1-3."""

    def __init__(self, tmp: Path):
        self.root = tmp / PROJECT
        self.wires = {
            name: Tripwire(address)
            for name, address in (("s1", "127.0.0.1"), ("a1", "127.0.0.2"), ("mac", "127.0.0.3"))
        }
        (self.root / "inventory").mkdir(parents=True)
        (self.root / ".piml").mkdir(mode=0o700)
        (self.root / "piml.yaml").write_text("")
        host = lambda name: {"ansible_host": self.wires[name].address, "ansible_port": self.wires[name].port}  # noqa: E731
        (self.root / "inventory/hosts.yml").write_text(
            yaml.safe_dump(
                {
                    "k3s_cluster": {
                        "children": {"server": {"hosts": {"s1": host("s1")}}, "agent": {"hosts": {"a1": host("a1")}}},
                        "vars": {"ansible_user": "pi", "piml_model": "pi5", "piml_memory_gb": 8},
                    },
                    "ray_external": {
                        "hosts": {"mac": {**host("mac"), "piml_arch": "arm64"}},
                        "vars": {"ansible_user": "pi"},
                    },
                }
            )
        )
        self.kubeconfig = tmp / "kube" / "config"  # never the user's ~/.kube/config
        self.kubeconfig.parent.mkdir()
        self.kubeconfig.write_text(OTHER_KUBECONFIG)
        os.chmod(self.kubeconfig, 0o600)

    def env(self, kubeconfig: Path | None = None, **changes: str | None) -> dict[str, str]:
        """The environment piml runs in: this rack's KUBECONFIG, wide columns, and `changes` (None: unset)."""
        env = dict(os.environ, KUBECONFIG=str(kubeconfig or self.kubeconfig), COLUMNS="200")
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def piml(
        self, *args: str, kubeconfig: Path | None = None, timeout: float = 120, **env: str | None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "piml", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            input="",
            timeout=timeout,
            env=self.env(kubeconfig, **env),
            errors="replace",
        )

    def knocks(self) -> dict[str, int]:
        return {name: wire.knocks for name, wire in self.wires.items() if wire.knocks}

    def close(self) -> None:
        for wire in self.wires.values():
            wire.close()
