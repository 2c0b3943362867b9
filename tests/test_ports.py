"""The test servers' ports (tests/ports.py): never the same one twice in a process, never one Ray Serve takes."""

from tests.ports import RAY_SERVE_REPLICA_PORTS, free_port


def test_a_port_is_handed_out_once_and_never_one_ray_serves_replicas_take():
    # a Ray head asks for nine at once: one equal pair among them and `ray start` refuses to start (CI saw it)
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if any(p in taken for taken in RAY_SERVE_REPLICA_PORTS)]
