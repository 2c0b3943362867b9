"""The one rule for "the memory cgroup is on" (playbooks/files/probe.py memory_cgroup_state), on /sys and /proc
trees built in tmp dirs: the probe reads them from a root, piml's facts parse the same files' text, and both
must say the same, right, thing (k3s's own check: pkg/cgroups validateCgroupsV2 / validateCgroupsV1)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from piml.facts import parsers as p
from piml.paths import playbooks_dir

HEADER = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
V2_ALL = "cpuset cpu io memory hugetlb pids rdma misc\n"
V2_NO_MEMORY = "cpuset cpu io hugetlb pids rdma misc\n"


def cgroups(memory: str | None, hierarchy: str = "0") -> str:
    """A /proc/cgroups; memory: its row's `hierarchy num_cgroups enabled` columns, None: no memory row (6.12)."""
    rows = [f"cpuset\t{hierarchy}\t60\t1", f"cpu\t{hierarchy}\t60\t1"]
    if memory is not None:
        rows.append("memory\t" + memory.replace(" ", "\t"))
    rows.append(f"pids\t{hierarchy}\t60\t1")
    return HEADER + "\n".join(rows) + "\n"


# name: (/sys/fs/cgroup/cgroup.controllers or None, /proc/cgroups, v1 dirs under /sys/fs/cgroup, expected)
LAYOUTS = {
    # cgroup v2 (Raspberry Pi OS bookworm, Debian 12): cgroup.controllers decides
    "v2 on": (V2_ALL, cgroups("0 60 1"), [], (2, True)),
    "v2 on, kernel 6.12 (no memory row)": (V2_ALL, cgroups(None), [], (2, True)),
    "v2, Pi without cgroup_enable=memory": (V2_NO_MEMORY, cgroups("0 1 0"), [], (2, False)),
    "v2, Pi 6.12 without cgroup_enable=memory": (V2_NO_MEMORY, cgroups(None), [], (2, False)),
    # the kernel has it, this cgroup tree does not (a container without it delegated): k3s fails here too
    "v2 lacking memory, /proc/cgroups enabled=1": (V2_NO_MEMORY, cgroups("0 60 1"), [], (2, False)),
    "v2, empty cgroup.controllers": ("", cgroups("0 60 1"), [], (2, False)),
    # cgroup v1 (Raspberry Pi OS buster/bullseye): /proc/cgroups' memory row, on a mounted hierarchy
    "v1 on": (None, cgroups("4 60 1", "3"), ["memory", "cpu"], (1, True)),
    "v1, memory enabled=0": (None, cgroups("0 1 0", "3"), ["cpu"], (1, False)),
    "v1, enabled=1 on no hierarchy (cgroup_no_v1=memory)": (None, cgroups("0 1 1", "3"), ["cpu"], (1, False)),
    "v1, no memory row": (None, cgroups(None, "3"), ["cpu"], (1, False)),
    # hybrid (systemd's: v1 controllers under /sys/fs/cgroup, an empty v2 tree at /sys/fs/cgroup/unified)
    "hybrid on": (None, cgroups("5 60 1", "3"), ["memory", "cpu", "unified"], (1, True)),
    "hybrid, memory enabled=0": (None, cgroups("0 1 0", "3"), ["cpu", "unified"], (1, False)),
    "nothing readable": (None, None, [], (None, None)),
}


def make_root(tmp_path: Path, controllers: str | None, proc: str | None, v1_dirs: list[str]) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "sys/fs/cgroup").mkdir(parents=True)
    if controllers is not None:
        (root / "sys/fs/cgroup/cgroup.controllers").write_text(controllers)
    if proc is not None:
        (root / "proc/cgroups").write_text(proc)
    for name in v1_dirs:
        (root / "sys/fs/cgroup" / name).mkdir()
    if "unified" in v1_dirs:
        (root / "sys/fs/cgroup/unified/cgroup.controllers").write_text("")
    return root


def facts_say(root: Path) -> tuple[int | None, bool | None]:
    """What piml's facts make of the same files: the facts script's `cgroup` and `proc_cgroups` sections."""
    unified = root / "sys/fs/cgroup/cgroup.controllers"
    section = f"controllers={unified.read_text().strip()}\n" if unified.exists() else ""
    proc = root / "proc/cgroups"
    v1 = p.parse_proc_cgroups(proc.read_text() if proc.exists() else "")
    return p.memory_cgroup(p.parse_cgroup_controllers(section), v1)


@pytest.mark.parametrize("name", LAYOUTS)
def test_probe_and_facts_say_the_same_on_each_layout(tmp_path, name):
    controllers, proc, v1_dirs, expected = LAYOUTS[name]
    root = make_root(tmp_path, controllers, proc, v1_dirs)
    assert p.probe_module().memory_cgroup(str(root)) == expected
    assert facts_say(root) == expected


def test_the_probe_program_reports_the_rule():
    # main(), run as the node runs it, reports "on" exactly when the rule says so (unknown counts as off)
    probe = playbooks_dir() / "files" / "probe.py"
    out = subprocess.run(
        [sys.executable, "-c", probe.read_text(), ""], capture_output=True, text=True, timeout=60, check=True
    )
    node = json.loads(out.stdout.partition("PIML-PROBE ")[2])
    assert node["memory_cgroup"] is (p.probe_module().memory_cgroup("/")[1] is True)


def test_loading_the_probe_runs_nothing(capsys):
    p.probe_module()
    assert capsys.readouterr().out == ""  # main() (which prints PIML-PROBE) runs only as __main__


# --- on a test node: the files covered in a private mount namespace --------------------------------------------
# The nodes share this machine's kernel, so the memory controller cannot really be switched off in one. What a
# Pi without cgroup_enable=memory shows is put in front of the probe and the facts script instead, in a mount
# namespace of their own (unshare -m: private propagation, gone when they exit; the node itself is untouched):
# a cgroup.controllers without `memory` bind-mounted over the real one (a cgroup v2 machine), or, where there is
# none (v1/hybrid, as this machine), a tmpfs over /sys/fs/cgroup holding one; a /proc/cgroups with memory
# enabled=0 for the v1 rule. Both run as root through nsenter, the probe as the playbook runs it (python3).
COVER_CONTROLLERS = (
    "f=/sys/fs/cgroup/cgroup.controllers; "
    "if [ -e $f ]; then tr ' ' '\\n' < $f | grep -vx memory | tr '\\n' ' ' > /run/piml-off"
    " && mount --bind /run/piml-off $f; "
    "else mount -t tmpfs v2view /sys/fs/cgroup && echo cpuset cpu io pids > $f; fi"
)
COVER_PROC_CGROUPS = (
    "sed 's/^memory\\t\\([0-9]*\\)\\t\\([0-9]*\\)\\t1$/memory\\t\\1\\t\\2\\t0/' /proc/cgroups > /run/piml-off && "
    "mount --bind /run/piml-off /proc/cgroups"
)


def node_says(sub, node, cover: str = "true") -> tuple[bool, tuple[int | None, bool | None]]:
    """(the probe's memory_cgroup, the facts' (cgroup_version, memory_cgroup)) on the node, after `cover`."""
    from piml.facts import gather_script, parse_facts

    sub.run(node, "cat > /run/piml-probe.py", input=(playbooks_dir() / "files" / "probe.py").read_text())
    sub.run(node, "cat > /run/piml-facts.sh", input=gather_script())
    script = f"set -e; {cover}; python3 /run/piml-probe.py ''; echo @@split@@; sh /run/piml-facts.sh"
    out = sub.run(node, "unshare -m sh -c " + shlex.quote(script)).stdout
    probe, _, facts = out.partition("@@split@@\n")
    answer = parse_facts(facts)
    return json.loads(probe.partition("PIML-PROBE ")[2])["memory_cgroup"], (answer.cgroup_version, answer.memory_cgroup)


def test_covered_cgroup_files_on_a_node_are_off_for_probe_and_facts(node_factory):
    sub = node_factory.substrate
    (node,) = node_factory(1)
    try:
        v1 = p.parse_proc_cgroups(sub.run(node, "cat /proc/cgroups").stdout)
        v2 = sub.run(node, "cat /sys/fs/cgroup/cgroup.controllers", check=False)
        if v2.returncode == 0:
            on = "memory" in v2.stdout.split()
            assert node_says(sub, node) == (on, (2, on))
        else:
            assert node_says(sub, node) == (v1.get("memory", False), (1, v1.get("memory", False)))
        # the case the old probe called "on": cgroup.controllers lacks memory while /proc/cgroups says enabled=1
        assert "memory\t" in sub.run(node, "cat /proc/cgroups").stdout
        assert node_says(sub, node, COVER_CONTROLLERS) == (False, (2, False))
        if v2.returncode != 0:
            assert node_says(sub, node, COVER_PROC_CGROUPS) == (False, (1, False))
        # nothing leaked out of those namespaces
        mounts = [line.split()[4] for line in sub.run(node, "cat /proc/self/mountinfo").stdout.splitlines()]
        assert "/proc/cgroups" not in mounts and "/sys/fs/cgroup/cgroup.controllers" not in mounts, mounts
        assert sub.run(node, "cat /sys/fs/cgroup/cgroup.controllers", check=False).stdout == v2.stdout
    finally:
        node_factory.destroy([node])
