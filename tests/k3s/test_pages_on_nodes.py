"""`prepare` and kernel=kernel8.img on real test nodes (the real playbook and probe over SSH). The test nodes are
x86 containers, so they run 4 KB pages: what is proved here is that prepare writes nothing where the node already
has 4 KB pages or has no kernel8.img (Ubuntu boots vmlinuz), keeps a block piml wrote earlier while 4 KB pages are
asked for, removes it without a reboot when they are not, and that the re-run probe agrees each time (changed=0).
The 16 KB path itself is decided by the same expressions, checked in tests/k3s/test_probe.py."""

from __future__ import annotations

import pytest
import yaml

from tests.k3s.helpers import changed_counts, make_scenario

pytestmark = pytest.mark.nodes

BLOCK = "# BEGIN piml: 4 KB pages (kernel8.img)\n[all]\nkernel=kernel8.img\n# END piml: 4 KB pages (kernel8.img)\n"


def config_txt(sub, node) -> str:
    return sub.run(node, "cat /boot/firmware/config.txt").stdout


def boot_id(sub, node) -> str:
    return sub.run(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def test_kernel8_only_where_the_node_runs_16k_pages_and_has_kernel8(node_factory, piml, tmp_path):
    sub = node_factory.substrate
    nodes = node_factory(3, names=["pg1", "pg2", "pg3"])
    try:
        rpi, ubuntu, switched = nodes
        sub.run(rpi, "head -c 4096 /dev/zero > /boot/firmware/kernel8.img")  # Raspberry Pi OS has both kernels
        sub.run(ubuntu, "rm -f /boot/firmware/kernel8.img; head -c 4096 /dev/zero > /boot/firmware/vmlinuz")
        sub.run(switched, "head -c 4096 /dev/zero > /boot/firmware/kernel8.img")
        sub.run(switched, f"printf '%s' '{BLOCK}' >> /boot/firmware/config.txt")  # an older piml switched it
        before = {n.name: config_txt(sub, n) for n in nodes}
        sc = make_scenario(piml, tmp_path, nodes, config={"nodes": {"pi5_4k_pages": True}})

        out, data = sc.up("--until", "prepare", "--accept-new-host-keys")
        assert out.returncode == 0, sc.failure(out, data)
        assert config_txt(sub, rpi) == before["pg1"]  # 4 KB pages already: nothing to switch
        assert config_txt(sub, ubuntu) == before["pg2"]  # no kernel8.img: never pointed at it
        assert config_txt(sub, switched).count(BLOCK) == 1  # 4 KB pages through piml's block: kept
        out, data = sc.up("--until", "prepare")  # the probe agrees: every node takes the fast path
        assert out.returncode == 0, sc.failure(out, data)
        assert changed_counts(data, "prepare") == {"pg1": 0, "pg2": 0, "pg3": 0}
        assert all(h["ok"] <= 6 for h in data["stages"]["prepare"]["hosts"].values()), data["stages"]["prepare"]

        # auto (the default): 4 KB pages are not asked for; piml's block goes, without a reboot for it
        (sc.root / "piml.yaml").write_text(
            yaml.safe_dump(
                {
                    **yaml.safe_load((sc.root / "piml.yaml").read_text()),
                    "nodes": {"pi5_4k_pages": "auto", "reboot_timeout": 120},
                }
            )
        )
        boots = {n.name: boot_id(sub, n) for n in nodes}
        out, data = sc.up("--until", "prepare")
        assert out.returncode == 0, sc.failure(out, data)
        assert changed_counts(data, "prepare") == {"pg1": 0, "pg2": 0, "pg3": 1}
        assert "kernel8.img" not in config_txt(sub, switched) and config_txt(sub, switched).endswith("\n")
        assert {n.name: boot_id(sub, n) for n in nodes} == boots
        out, data = sc.up("--until", "prepare")
        assert out.returncode == 0, sc.failure(out, data)
        assert changed_counts(data, "prepare") == {"pg1": 0, "pg2": 0, "pg3": 0}
    finally:
        node_factory.destroy(nodes)
