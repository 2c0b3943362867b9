"""The queue's requests in a backup: Redis as rendered (`--appendonly yes`, its claim's directory as /data), requests
queued through piml's client by a port-forward, the volume taken out by `piml backup`'s program while Redis runs
and rewrites its append-only file, then put back by `piml restore`'s program into an emptied volume (a board
re-flashed) with Redis stopped, as restore stops it. Redis started again as rendered has every request queued
before the backup, in order, and none of those after it.

What it guards against: a copy of a live Redis directory whose manifest names files a rewrite has already deleted
(a torn AOF Redis refuses to load, or loads empty), and restoring only `dump.rdb`, which a Redis run with
`--appendonly yes` never reads (docs/day2-design.md, section 5)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading

import pytest

from piml.backup.onnode import put_back_command, snapshot_command
from piml.client import status, submit
from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


def test_queued_requests_come_back_in_order_after_a_backup_taken_while_redis_rewrites(pod_network, tmp_path):
    import redis as redis_py

    platform = start_platform("pi5-3x8gb", {"queue": {"kind": "redis"}}, tmp_path / "lab", pod_network)
    try:
        pod = platform.deployment("redis")
        platform.kubelet.wait_probe(pod.container(), "readinessProbe", budget=120)
        password = platform.secret("redis", "password")
        url = f"redis://:{password}@127.0.0.1:{platform.forward(pod, 6379).port}/0"
        before = [submit("models:/iris/1", f"s3://data/part-{i}.csv", queue_url=url) for i in range(200)]
        volume = platform.kubelet.claims["redis-data"]
        assert (volume / "appendonlydir").is_dir()  # what --appendonly yes keeps, and what Redis reads at start

        # the copy is taken while Redis rewrites its AOF again and again, and requests keep coming; 40 MB of other
        # data make each copy and each rewrite take long enough to cross
        client = redis_py.Redis.from_url(url, socket_timeout=30)
        for batch in range(40):
            client.mset({f"filler:{batch}:{i}": random.randbytes(10_000) for i in range(100)})
        done = threading.Event()
        during: list[str] = []

        def busy() -> None:
            while not done.is_set():
                during.append(submit("models:/iris/1", "s3://data/during.csv", queue_url=url))
                try:
                    client.bgrewriteaof()
                except redis_py.ResponseError:  # one is running already
                    pass

        writer = threading.Thread(target=busy)
        writer.start()
        try:
            for _ in range(5):  # each copy has to hold together, whenever the rewrites fall
                out = subprocess.run(snapshot_command(str(volume)), shell=True, capture_output=True, timeout=120)
                assert out.returncode == 0, out.stderr.decode()
        finally:
            done.set()
            writer.join(timeout=30)
        after = submit("models:/iris/1", "s3://data/after.csv", queue_url=url)
        client.close()

        # the board is re-flashed: Redis stopped (as restore scales it to 0), its volume empty; then put back
        platform.kubelet.delete(pod)
        shutil.rmtree(volume)
        volume.mkdir()
        back = subprocess.run(put_back_command(str(volume), "20261203T000000Z"), shell=True, input=out.stdout,
                              capture_output=True, timeout=60)  # fmt: skip
        assert back.returncode == 0, back.stderr.decode()

        template = platform.kubelet.find("Deployment", "redis", platform.ns)["spec"]["template"]
        pod = platform.kubelet.start("redis-1", platform.ns, template["metadata"]["labels"], template["spec"])
        platform.kubelet.wait_probe(pod.container(), "readinessProbe", budget=120)
        url = f"redis://:{password}@127.0.0.1:{platform.forward(pod, 6379).port}/0"
        assert all((status(i, queue_url=url) or {}).get("state") == "queued" for i in before)
        assert status(after, queue_url=url) is None
        client = redis_py.Redis.from_url(url, socket_timeout=10)
        try:
            # FIFO: submit pushes on the left, runners take from the right (piml/queue/redis_broker.py)
            ids = [json.loads(raw)["id"] for raw in reversed(client.lrange("piml:queue", 0, -1))]
        finally:
            client.close()
        assert ids[: len(before)] == before
        assert ids[len(before) :] == during[: len(ids) - len(before)]  # those the copy caught, in order
    finally:
        platform.close()
