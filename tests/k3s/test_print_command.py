"""`piml up --print-command`: the exact ansible-playbook command of each playbook stage, its variables in a 0600
file, nothing run. The printed command is checked by the real ansible-playbook (--syntax-check: it parses the
inventory, the playbook and the vars file, and reaches no host)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

SCENARIO = Path(__file__).resolve().parents[1] / "render" / "scenarios" / "pi5-3x8gb.yml"


def lab(tmp_path: Path) -> Path:
    (tmp_path / "inventory").mkdir()
    shutil.copy(SCENARIO, tmp_path / "inventory" / "hosts.yml")
    return tmp_path


def test_prints_each_stage_with_its_vars_file_and_no_secret(piml, tmp_path):
    root = lab(tmp_path)
    out = piml("up", "--print-command", cwd=root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "# prepare: pi1, pi2, pi3 (variables in .piml/vars-prepare.json, mode 0600)"
    assert lines[2] == "# k3s: pi1, pi2, pi3 (variables in .piml/vars-k3s.json, mode 0600)"
    token = (root / ".piml" / "k3s-token").read_text().strip()
    assert token and token not in out.stdout + out.stderr  # on no command line
    k3s_vars = root / ".piml" / "vars-k3s.json"
    assert json.loads(k3s_vars.read_text())["token"] == token
    assert {oct(p.stat().st_mode & 0o777) for p in (root / ".piml").glob("vars-*.json")} == {"0o600"}
    assert oct((root / ".piml").stat().st_mode & 0o777) == "0o700"


def test_the_printed_command_is_one_ansible_playbook_accepts(piml, tmp_path):
    root = lab(tmp_path)
    out = piml("up", "--only", "k3s", "--limit", "pi2", "--print-command", "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    command = json.loads(out.stdout)["commands"]["k3s"]
    assert command["argv"][-2:] == ["--limit", "pi2"]
    env = {**os.environ, **command["env"]}
    checked = subprocess.run([*command["argv"], "--syntax-check"], env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    # and the shell form says the same
    table = piml("up", "--only", "k3s", "--limit", "pi2", "--print-command", cwd=root).stdout.splitlines()[1]
    assert shlex.split(table)[len(command["env"]) :] == command["argv"]


def test_no_playbook_stage_is_one_line_exit_2(piml, tmp_path):
    out = piml("up", "--only", "platform", "--print-command", cwd=lab(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: --print-command: no playbook stage among platform; the playbook stages are "
        "prepare and k3s: e.g. piml up --only k3s --print-command"
    )
    assert not (tmp_path / ".piml" / "vars-k3s.json").exists()
