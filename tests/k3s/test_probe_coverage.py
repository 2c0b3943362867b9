"""Every task the re-run fast path can skip has its counterpart in the probe (playbooks/files/probe.py).

prepare.yml and k3s.yml leave a node at their `meta: end_host` when the probe finds it as wanted, so a task after
that point which changes something the probe does not check is skipped on every re-run, silently. Tasks before
the end_host always run and need nothing. This file is the one place that links each task to its check:

- PROBED: task -> the probe's checks that find it undone: labels of prepare_differs() for prepare.yml, answer
  keys of k3s_state() for k3s.yml (which tasks/k3s-probe.yml must compare, as `_k.<key>`).
- NOT_PROBED: task -> why no check is needed (it reads, decides or reports only).

Tasks are named `file: task name`, the file relative to playbooks/. The YAML is read as YAML; no Ansible runs.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import yaml

from piml.paths import playbooks_dir

PLAYS = {"prepare.yml": "prepare_differs", "k3s.yml": "k3s_state"}  # playbook -> the probe function checking it

PROBED: dict[str, tuple[str, ...]] = {
    "prepare.yml: Set the hostname from the inventory": ("hostname",),
    "prepare.yml: Point 127.0.1.1 at the hostname in /etc/hosts": ("/etc/hosts",),
    "prepare.yml: Add the memory cgroup flags to cmdline.txt (kept on one line)": ("cmdline.txt",),
    "prepare.yml: Boot the Pi 5 kernel with 4 KB pages (kernel8.img) where asked for and there is one": ("config.txt",),
    "prepare.yml: Turn swap off now": ("swap",),
    "prepare.yml: Keep dphys-swapfile from turning swap on again": ("dphys-swapfile",),
    "prepare.yml: Comment out swap in /etc/fstab": ("/etc/fstab",),
    "prepare.yml: Load the kernel modules k3s needs at boot": ("files",),  # want.files: content and mode
    "prepare.yml: Load the kernel modules k3s needs now": ("module ",),
    "prepare.yml: Set the sysctls k3s needs at boot": ("files",),
    "prepare.yml: Apply those sysctls now": ("sysctl ",),
    "prepare.yml: Install the required packages": ("package ",),
    "prepare.yml: Reboot (bounded by piml_reboot_timeout)": ("cmdline.txt", "memory cgroup", "page size"),
    "prepare.yml: Verify the memory cgroup is on": ("memory cgroup",),
    "prepare.yml: Verify the page size": ("page size",),
    "tasks/k3s-node.yml: Make k3s's directories": ("dirs",),
    "tasks/k3s-node.yml: Write /etc/rancher/k3s/config.yaml (mode 0600, it holds the token)": ("config",),
    "tasks/k3s-node.yml: Copy the air-gap k3s binary": ("files",),  # sha1 and mode of each air-gap file
    "tasks/k3s-node.yml: Copy the air-gap images tarball": ("files",),
    "tasks/k3s-node.yml: Copy the install script (air-gap)": ("files",),
    "tasks/k3s-node.yml: Download the install script": ("files",),
    "tasks/k3s-node.yml: Check the air-gap binary is the pinned version": ("version",),
    "tasks/k3s-node.yml: Install k3s {{ _k3s_version }} ({{ _role }})": ("version", "unit_file", "marker"),
    "tasks/k3s-node.yml: Remember what was installed": ("marker",),
    "tasks/k3s-node.yml: Start or restart k3s (not waiting here; the waits below are bounded)": ("active",),
    "tasks/k3s-node.yml: Wait for port 6443 to answer": ("port",),
    "tasks/k3s-node.yml: Ask the first server for the node's Ready condition": ("ready",),
}

NOT_PROBED: dict[str, str] = {
    "prepare.yml: Read cmdline.txt": "reads (slurp) for the next task",
    "prepare.yml: Find missing packages": "reads (changed_when: false) for the next task",
    "prepare.yml: Say which node did not come back": "reports a failed reboot",
    "tasks/probe.yml: Read the node's boot files, cgroups, page size and swap": "the probe itself, read-only",
    "tasks/probe.yml: Remember what the node said": "set_fact",
    "tasks/k3s-node.yml: See which k3s is installed": "reads (changed_when: false) for the next task",
    "tasks/k3s-node.yml: Decide what to do": "set_fact",
    "tasks/k3s-node.yml: Fetch the k3s journal": "reads (changed_when: false) to report a failed wait",
    "tasks/k3s-node.yml: Say what to look at": "reports a failed wait",
    "tasks/k3s-node.yml: Refuse to move a node to an older k3s (there is no way back but a datastore backup)": (
        "an assert on the probe's own answer (_node.k3s.version), changes nothing"
    ),
}

CONTAINERS = ("block", "rescue", "always")
IMPORTS = ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks", "import_tasks", "include_tasks")


def _task_file(base: Path, including: Path, name: str) -> Path:
    """As Ansible finds an imported file: next to the file that imports it, else next to the playbook."""
    near = including.parent / name
    return near if near.is_file() else base / name


def skippable_tasks(base: Path, playbook: str) -> list[str]:
    """`file: name` of every task of the playbook after the first `meta: end_host` of its play, in order."""
    found: list[str] = []

    def walk(tasks, path: Path, after: bool) -> bool:
        for task in tasks or []:
            imported = next((task[k] for k in IMPORTS if k in task), None)
            if imported is not None:
                target = _task_file(base, path, imported)
                after = walk(yaml.safe_load(target.read_text()), target, after)
            elif any(k in task for k in CONTAINERS):
                for key in CONTAINERS:
                    after = walk(task.get(key), path, after)
            elif task.get("ansible.builtin.meta", task.get("meta")) == "end_host":
                after = True
            elif after:
                found.append(f"{path.relative_to(base)}: {task.get('name', '(unnamed)')}")
        return after

    for play in yaml.safe_load((base / playbook).read_text()):
        walk(play.get("tasks"), base / playbook, False)
    return found


def unlinked(base: Path) -> list[str]:
    """Skippable tasks with neither a probe check nor a reason, each once (k3s.yml imports k3s-node.yml thrice)."""
    tasks = dict.fromkeys(t for pb in PLAYS for t in skippable_tasks(base, pb))
    return [t for t in tasks if t not in PROBED and t not in NOT_PROBED]


def _strings_in(function: str) -> set[str]:
    tree = ast.parse((playbooks_dir() / "files" / "probe.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_every_skippable_task_has_its_probe_check_or_a_reason():
    missing = unlinked(playbooks_dir())
    assert not missing, (
        f"tasks the re-run fast path would skip without a check: {missing}; add the check to "
        "playbooks/files/probe.py and the task to PROBED here (or to NOT_PROBED with the reason)"
    )


def test_the_links_name_real_tasks_and_real_checks():
    tasks = {pb: set(skippable_tasks(playbooks_dir(), pb)) for pb in PLAYS}
    assert not set(PROBED) & set(NOT_PROBED)
    stale = set(PROBED) | set(NOT_PROBED)
    for names in tasks.values():
        stale -= names
    assert not stale, f"no such task after a fast path's end_host (renamed or moved?): {sorted(stale)}"
    k3s_probe = (playbooks_dir() / "tasks" / "k3s-probe.yml").read_text()
    for playbook, function in PLAYS.items():
        labels = _strings_in(function)
        for task in sorted(tasks[playbook] & set(PROBED)):
            for check in PROBED[task]:
                assert check in labels, f"{task}: probe.py {function}() has no check {check!r}"
                # k3s: the probe only reports; tasks/k3s-probe.yml decides, so it must compare that key
                assert function != "k3s_state" or f"_k.{check}" in k3s_probe, f"{task}: k3s-probe.yml ignores {check}"


def test_a_task_added_without_its_probe_check_fails(tmp_path):
    base = tmp_path / "playbooks"
    shutil.copytree(playbooks_dir(), base)
    assert unlinked(base) == []
    new = {
        "name": "Tune something new",
        "ansible.builtin.copy": {"dest": "/etc/new.conf", "content": "x", "mode": "0644"},
    }

    prepare = yaml.safe_load((base / "prepare.yml").read_text())
    prepare[0]["tasks"].append(new)
    (base / "prepare.yml").write_text(yaml.safe_dump(prepare, sort_keys=False))
    assert unlinked(base) == ["prepare.yml: Tune something new"]

    # in a task file a play imports, and inside a block
    node = yaml.safe_load((base / "tasks/k3s-node.yml").read_text())
    node.append({"name": "A block", "block": [dict(new, name="Tune in k3s")]})
    (base / "tasks/k3s-node.yml").write_text(yaml.safe_dump(node, sort_keys=False))
    assert unlinked(base) == ["prepare.yml: Tune something new", "tasks/k3s-node.yml: Tune in k3s"]


def test_tasks_before_the_fast_path_need_no_check(tmp_path):
    base = tmp_path / "playbooks"
    shutil.copytree(playbooks_dir(), base)
    prepare = yaml.safe_load((base / "prepare.yml").read_text())
    prepare[0]["tasks"].insert(0, {"name": "Runs on every run", "ansible.builtin.command": "true"})
    (base / "prepare.yml").write_text(yaml.safe_dump(prepare, sort_keys=False))
    assert unlinked(base) == []
    assert skippable_tasks(base, "prepare.yml")[0] == "prepare.yml: Set the hostname from the inventory"
