"""Pod networking for the contract tests: each pod is a network namespace of its own on one bridge, so a
program binds 0.0.0.0 as in its pod, has its own ports, and is reached at its own address (its pod IP).

Addresses are in 198.19.N.0/24 (N = PIML_TESTNODES_INSTANCE, default 0; part of 198.18.0.0/15, set aside for
network tests; the test nodes use 198.18.0.0/24). The bridge's 198.19.N.1 in the root namespace plays the node: the kubelet's probes and the
ingress come from there. Name resolution is /etc/hosts inside each namespace (`ip netns exec` binds
/etc/netns/NAME/hosts over it): every Service name form -> its pod's address (see README.md for what that fakes).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

# Two runs on one machine (a developer's and CI's) keep apart by PIML_TESTNODES_INSTANCE, as the test nodes do.
INSTANCE = int(os.environ.get("PIML_TESTNODES_INSTANCE", "0"))
BRIDGE = f"pimlc{INSTANCE}"
SUBNET = f"198.19.{INSTANCE}"
NODE_IP = f"{SUBNET}.1"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


class Network:
    """The bridge and the pods' namespaces; `close()` removes everything it made."""

    def __init__(self, prefix: str = f"pimlc{INSTANCE}"):
        if os.geteuid() != 0:
            raise RuntimeError("the contract tests need root (network and mount namespaces)")
        self.prefix = prefix
        self.names: list[str] = []
        self.next_host = 10
        self.cleanup_stale()
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")

    def cleanup_stale(self) -> None:
        """What an earlier run killed mid-way left behind (ours only: by prefix)."""
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        for line in listing.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(self.prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
                shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, timeout=30)
        # a namespace deleted by name lives on while anything still holds it (the kernel's own clean-up of its
        # sockets), and with it the host side of its veth, whose name the next run's pod would want
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30).stdout
        for line in links.splitlines():
            name = line.split(": ")[1].split("@")[0] if ": " in line else ""
            if name.startswith(f"pc{INSTANCE}v") and name.endswith("h"):
                subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)

    def add(self, hosts_text: str) -> tuple[str, str]:
        """A new pod namespace: (its name, its address). `hosts_text` becomes its /etc/hosts."""
        if self.next_host > 250:
            raise RuntimeError("too many pods for one contract network")
        index = self.next_host
        self.next_host += 1
        name, ip = f"{self.prefix}-{index}", f"{SUBNET}.{index}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        host_side, pod_side = f"pc{INSTANCE}v{index}h", f"pc{INSTANCE}v{index}p"
        sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", pod_side)
        sh("ip", "link", "set", host_side, "master", BRIDGE, "up")
        sh("ip", "link", "set", pod_side, "netns", name)
        for argv in (
            ["ip", "addr", "add", f"{ip}/24", "dev", pod_side],
            ["ip", "link", "set", pod_side, "name", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", NODE_IP],
        ):
            sh("ip", "netns", "exec", name, *argv)
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts_text)
        (etc / "resolv.conf").write_text("# contract tests: names come from /etc/hosts only\nnameserver 127.0.0.1\n")
        return name, ip

    def set_hosts(self, name: str, hosts_text: str) -> None:
        (Path("/etc/netns") / name / "hosts").write_text(hosts_text)

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        self.names.clear()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, timeout=30)


def dial_inside(netns: str, port: int, timeout: float = 5) -> socket.socket:
    """A TCP connection to 127.0.0.1:port inside the pod's namespace, as the kubelet's port-forward makes one.

    The socket is made by a thread that enters the namespace (setns moves only the calling thread), so the
    connection lives there while this process stays where it is."""
    box: dict = {}

    def enter_and_connect():
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            box["socket"] = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as error:
            box["error"] = error

    thread = threading.Thread(target=enter_and_connect, daemon=True)
    thread.start()
    thread.join(timeout + 2)
    if "socket" not in box:
        raise box.get("error") or TimeoutError(f"no connection to port {port} in {netns}")
    return box["socket"]


class PortForward:
    """A loopback listener bridged to a pod's port, as `kubectl port-forward` / piml's tunnel are: the client
    sends Host: 127.0.0.1:<this port>, the program sees a connection from its own loopback."""

    def __init__(self, netns: str, port: int):
        self.netns, self.target = netns, port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            try:
                upstream = dial_inside(self.netns, self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self):
        self.closed.set()
        self.listener.close()
        self.thread.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    source.settimeout(300)
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)  # half-close: the other direction may still be sending
        except OSError:
            pass
