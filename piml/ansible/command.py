"""`piml up --print-command`: the exact `ansible-playbook` command of each playbook stage, to rerun or debug it by
hand. The stage's variables go into a file under .piml/ (mode 0600: the k3s stage's holds the cluster token),
passed with `-e @FILE`, so nothing secret is on the command line."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from piml.ansible.runner import ansible_settings
from piml.fsutil import write_atomic

if TYPE_CHECKING:
    from piml.project import Cluster


def vars_file(cluster: Cluster, stage: str) -> Path:
    return cluster.paths.state / f"vars-{stage}.json"


def playbook_command(cluster: Cluster, playbook: str, hosts: list[str], extravars: dict, stage: str) -> dict:
    """Write the stage's variables (0600) and return the command: {"env", "argv", "vars_file", "shell"}."""
    from piml.paths import playbooks_dir

    path = vars_file(cluster, stage)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps(extravars, indent=2, sort_keys=True) + "\n", mode=0o600)
    local = Path(sys.executable).parent / "ansible-playbook"  # the one piml's own Ansible comes with
    binary = str(local) if os.access(local, os.X_OK) else (shutil.which("ansible-playbook") or "ansible-playbook")
    argv = [
        binary,
        "-i",
        str(cluster.paths.inventory.resolve()),
        str(playbooks_dir() / playbook),
        "-e",
        f"@{path.resolve()}",
        "--limit",
        ",".join(hosts),
    ]
    env = ansible_settings(cluster, len(hosts))
    shell = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(argv)
    return {"env": env, "argv": argv, "vars_file": str(path), "shell": shell}
