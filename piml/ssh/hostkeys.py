"""The project's known_hosts (.piml/known_hosts): trust on first use only when asked, never on change.

A host piml has never seen is refused unless the user passes --accept-new-host-keys (then its key
is recorded); a host whose key changed is always refused. Nothing is run on a refused host.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import paramiko

from piml.fsutil import write_atomic


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry_name(address: str, port: int) -> str:
    """How known_hosts names a host: `addr`, or `[addr]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, key: paramiko.PKey):
        self.key = key
        super().__init__(f"unknown host key {fingerprint(key)}")


class KnownHosts:
    """.piml/known_hosts, shared by the threads of one command; writes are atomic."""

    def __init__(self, path: Path, accept_new: bool):
        self.path = Path(path)
        self.accept_new = accept_new
        self.keys = paramiko.HostKeys()
        if self.path.exists():
            self.keys.load(str(self.path))
        self._lock = threading.Lock()
        self.recorded: list[tuple[str, str]] = []  # (host entry, fingerprint) learned this run

    def install(self, client: paramiko.SSHClient) -> None:
        """Make `client` check host keys against this file, and only this file."""
        client.get_host_keys().clear()
        for name, keys in self.keys.items():
            for key_type, key in keys.items():
                client.get_host_keys().add(name, key_type, key)
        client.set_missing_host_key_policy(_Policy(self))

    def record(self, name: str, key: paramiko.PKey) -> None:
        with self._lock:
            self.keys.add(name, key.get_name(), key)
            self.recorded.append((name, fingerprint(key)))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                f"{host} {kind} {k.get_base64()}\n" for host, entry in self.keys.items() for kind, k in entry.items()
            ]
            write_atomic(self.path, "".join(lines), mode=0o600)


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known: KnownHosts):
        self.known = known

    def missing_host_key(self, client, hostname, key):
        if not self.known.accept_new:
            raise UnknownHostKey(key)
        self.known.record(hostname, key)
