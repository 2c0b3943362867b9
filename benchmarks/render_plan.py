"""Render time for a 20-node inventory (goal < 0.5 s), and the default platform's footprint on
3 x Pi 5 8 GB: memory the services request (goal <= 3 GiB) and the share left for work (goal >= 60%)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from piml.config import PimlConfig  # noqa: E402
from piml.inventory import load_inventory  # noqa: E402
from piml.plan import make_plan  # noqa: E402
from piml.project import Cluster, ProjectPaths  # noqa: E402
from piml.render import render_platform  # noqa: E402


def cluster_of(text: str, tmp: Path) -> Cluster:
    path = tmp / "hosts.yml"
    path.write_text(text)
    return Cluster(ProjectPaths(tmp, path), load_inventory(path), PimlConfig())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        hosts = "\n".join(f"        pi{i}: {{ansible_host: 10.0.0.{i}}}" for i in range(2, 21))
        big = cluster_of(
            "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1: {ansible_host: 10.0.0.1}\n"
            f"    agent:\n      hosts:\n{hosts}\n  vars: {{piml_model: pi5, piml_memory_gb: 8}}\n",
            Path(tmp),
        )
        render_platform(big, make_plan(big))  # warm: template compilation happens once per process
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            render_platform(big, make_plan(big))
            runs.append(time.perf_counter() - start)
        cold = Path(tmp) / "x"
        cold.mkdir()
        small = cluster_of((REPO / "inventory/examples/pi5-rack.yml").read_text(), cold)
        plan = make_plan(small)
    best = min(runs)
    print(f"plan + render, 20 nodes: {best * 1000:.0f} ms (goal < 500 ms)")
    print(
        f"default platform on 3 x Pi 5 8 GB: services request {plan.services_memory / 1024:.2f} GiB (goal <= 3 GiB), "
        f"{plan.workload_share:.0%} left for workloads (goal >= 60%)"
    )
    return 0 if best < 0.5 and plan.services_memory <= 3072 and plan.workload_share >= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
