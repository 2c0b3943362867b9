"""Fan-out: `piml status` on 12 test nodes vs on 1, and vs `ansible all -m setup` on the same 12.

Boots 12 test nodes (systemd-nspawn, instance 2), makes a project for them, then measures the three
commands interleaved, best of RUNS each, in one run. Needs root (see tests/nodes/README.md).
Goals: piml 12/1 <= 1.3; piml / ansible setup <= 0.2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bound import bound  # noqa: E402
from tests.nodes.substrate import Substrate  # noqa: E402  (the test-node substrate)

NODES = 12
RUNS = 5
INSTANCE = 2


def timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # No subprocess timeout: its polling wait would add to what we measure; the alarm bounds all.
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    bound(900)
    with Substrate(instance=INSTANCE) as sub:
        sub.teardown()
        sub.setup()
        nodes = sub.create(NODES, model="pi5")
        work = Path(tempfile.mkdtemp(prefix="piml-fanout-"))
        python = sys.executable
        args = [python, "-m", "piml", "init", "rack", "--ssh-key", nodes[0].key_path]
        for index, node in enumerate(nodes):
            args += ["--node", f"{node.name}={node.address}" + (":server" if index == 0 else "")]
        subprocess.run(args, cwd=work, check=True, capture_output=True, timeout=60)
        project = work / "rack"
        env = {
            **os.environ,
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_FORKS": str(NODES),
            "ANSIBLE_SSH_ARGS": f"-o UserKnownHostsFile={nodes[0].known_hosts} -o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        }
        # Record host keys once, so every measured run is the steady state.
        subprocess.run(
            [python, "-m", "piml", "status", "--json", "--accept-new-host-keys"],
            cwd=project,
            check=True,
            capture_output=True,
            timeout=120,
        )
        commands = {
            "piml status (12 nodes)": [python, "-m", "piml", "status", "--json"],
            "piml status (1 node)": [python, "-m", "piml", "status", "--json", "--limit", nodes[0].name],
            "ansible all -m setup (12 nodes)": ["ansible", "all", "-i", "inventory/hosts.yml", "-m", "setup"],
        }
        best = {name: float("inf") for name in commands}
        cpu = {name: float("inf") for name in commands}
        for _ in range(RUNS):  # interleaved: all three see the same machine
            for name, argv in commands.items():
                wall, used = timed(argv, project, env)
                best[name], cpu[name] = min(best[name], wall), min(cpu[name], used)
        sub.teardown()
    for name, seconds in best.items():
        print(f"{name:34s} {seconds:6.2f} s wall, {cpu[name]:5.2f} s CPU on this side")
    fan = best["piml status (12 nodes)"] / best["piml status (1 node)"]
    vs_ansible = best["piml status (12 nodes)"] / best["ansible all -m setup (12 nodes)"]
    print(f"ratio piml 12 nodes / 1 node:        {fan:.2f} (goal <= 1.3)")
    print(f"ratio piml / ansible setup, 12 nodes: {vs_ansible:.2f} (goal <= 0.2)")
    # The test nodes share this machine's cores: their sshd and facts work lands on the same CPUs
    # as piml. piml's own CPU, 12 vs 1, shows what the fan-out costs piml itself.
    print(f"ratio piml's own CPU 12 / 1 node:    {cpu['piml status (12 nodes)'] / cpu['piml status (1 node)']:.2f}")
    print(f"(this machine: {os.cpu_count()} cores shared by piml and the {NODES} test nodes)")
    return 0 if fan <= 1.3 and vs_ansible <= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
