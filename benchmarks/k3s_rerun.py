"""Re-run cost: the second `piml up` (nothing to change) as a ratio of the first (goal <= 0.25).

Boots 3 test nodes (systemd-nspawn, instance 3: 1 server + 2 agents), makes a project whose k3s comes
from the test stand-in air-gap dir (tests/standins/k3s-airgap), runs `piml up` twice and prints both
times, the ratio and the second run's changed counts (must be 0). Needs root (see tests/nodes/README.md).
The first run includes prepare's reboot of every node (the seeded cmdline.txt lacks the cgroup flags)
and the stand-in's start, which is faster than real k3s: on real Pis the ratio is lower still.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bound import bound  # noqa: E402
from tests.conftest import run_piml  # noqa: E402
from tests.k3s.helpers import make_scenario  # noqa: E402
from tests.nodes.substrate import Substrate  # noqa: E402

INSTANCE = 3
GOAL = 0.25


def main() -> int:
    bound(1200)
    sub = Substrate(instance=INSTANCE)
    sub.teardown()
    sub.setup()
    try:
        nodes = sub.create(3, names=["bsrv", "bag1", "bag2"])
        with tempfile.TemporaryDirectory() as tmp:
            scenario = make_scenario(run_piml, Path(tmp), nodes, name="bench")
            times, data = [], None
            for flags in (("--accept-new-host-keys",), ()):
                start = time.perf_counter()
                out, data = scenario.up(*flags, timeout=900)
                times.append(time.perf_counter() - start)
                if out.returncode != 0:
                    print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
                    return 1
            changed = {
                stage: {h: s["changed"] for h, s in data["stages"][stage]["hosts"].items()}
                for stage in ("prepare", "k3s", "kubeconfig")
            }
        ratio = times[1] / times[0]
        print(f"first piml up:  {times[0]:6.1f} s  (prepare with reboots, k3s install, kubeconfig)")
        print(f"second piml up: {times[1]:6.1f} s  changed: {json.dumps(changed)}")
        print(f"ratio second/first: {ratio:.2f}  (goal <= {GOAL}) {'ok' if ratio <= GOAL else 'OVER GOAL'}")
        return 0 if ratio <= GOAL and not any(v for c in changed.values() for v in c.values()) else 1
    finally:
        sub.teardown()


if __name__ == "__main__":
    sys.exit(main())
