"""Loopback ports for the test servers, picked where the kernel never hands ports out on its own.

A port the kernel chose for `bind(("127.0.0.1", 0))` and that was released again is back in the ephemeral range:
any later `bind(0)` or outgoing connection (Ray's workers, kubectl's port-forwards, a client's source port) may get
it before our server binds it. CI saw that: rabbitmq-server's listener failed with eaddrinuse on a port picked
seconds earlier. Ports below the ephemeral range are only ever taken by someone asking for that number, so a
random one there that binds now stays ours until the server starts.

Two more rules, one from a CI failure and one from Ray's source:
- A port is handed out once per process. A Ray head takes nine ports at once, and two equal draws among them made
  `ray start` refuse ("Ray component ... is trying to use a port number ... that is used by other components").
- Ray Serve's replicas, in the HAProxy mode the serving pods run (apps.POD_ENV), bind their own HTTP and gRPC ports
  from 30000-31000 and 40000-41000 (`RAY_SERVE_DIRECT_INGRESS_*_PORT` in ray/serve/_private/constants.py); a test's
  Ray Serve may hold any of them, so they are never drawn.
Two test processes drawing the same number at the same moment is the one collision left (about one in ten thousand).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's workers take 10002-19999 by default, and well-known servers sit below 10000; the kernel's range is above.
LOWEST = 20000
# Ray Serve's replicas' own HTTP and gRPC ports (its defaults, which the pods and the tests keep).
RAY_SERVE_REPLICA_PORTS = (range(30000, 31001), range(40000, 41001))

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidates() -> tuple[int, int]:
    """The widest run of ports outside the ephemeral range, at or above LOWEST."""
    low, high = _ephemeral_range()
    below = (LOWEST, low - 1)
    above = (max(high + 1, LOWEST), 65535)
    return max(below, above, key=lambda r: r[1] - r[0])


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the range the kernel assigns by itself."""
    first, last = _candidates()
    if first > last:
        raise RuntimeError(f"no loopback ports from {LOWEST} up lie outside the kernel's range {_ephemeral_range()}")
    for _ in range(200):
        port = random.randint(first, last)
        if port in _handed_out or any(port in taken for taken in RAY_SERVE_REPLICA_PORTS):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: draw again
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {first}-{last} after 200 draws")
