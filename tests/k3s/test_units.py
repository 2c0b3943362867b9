"""k3s pieces that need no nodes: kubeconfig merge, stage selection, token, runner events, CLI guards."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from piml.ansible.runner import PlaybookResult, _collect, ssh_args
from piml.commands.up import STAGES, select_stages
from piml.errors import InputError
from piml.k3s import kubeconfig as kc

K3S_YAML = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
"""

EXISTING = """apiVersion: v1
clusters:
- cluster:
    server: https://a:6443
  name: a
# comment kept
- cluster: {server: "https://b:6443"}
  name: b
contexts:
- context:
    cluster: a
    user: a
  name: a
current-context: a
kind: Config
preferences: {}
users:
- name: a
  user:
    token: t   # trailing comment kept
"""


def ours(name="rack", server="https://10.0.0.1:6443"):
    return kc.for_project(K3S_YAML, name, server)


def test_for_project_renames_and_points_at_the_server():
    data = ours()
    assert data["clusters"] == [
        {"name": "rack", "cluster": {"certificate-authority-data": "Q0E=", "server": "https://10.0.0.1:6443"}}
    ]
    assert data["contexts"][0] == {"name": "rack", "context": {"cluster": "rack", "user": "rack"}}
    assert data["users"][0]["user"]["client-key-data"] == "a2V5" and data["current-context"] == "rack"
    assert kc.server_url("fd00::1") == "https://[fd00::1]:6443"


def test_merge_appends_and_keeps_the_rest_byte_for_byte():
    text, rewritten = kc.merge_text(EXISTING, ours(), "rack")
    assert not rewritten
    # every original line is still there, in order: we only inserted lines
    it = iter(text.splitlines())
    assert all(any(line == other for other in it) for line in EXISTING.splitlines())
    data = yaml.safe_load(text)
    assert [c["name"] for c in data["clusters"]] == ["a", "b", "rack"]
    assert data["current-context"] == "a"
    # idempotent; replacing our entries only; removing gives back the original exactly
    assert kc.merge_text(text, ours(), "rack")[0] == text
    moved, _ = kc.merge_text(text, ours(server="https://10.0.0.2:6443"), "rack")
    assert "10.0.0.2" in moved and "10.0.0.1" not in moved and moved.count("name: rack") == 3
    assert kc.merge_text(moved, None, "rack")[0] == EXISTING


def test_merge_into_empty_missing_and_unusual_files(tmp_path):
    target = tmp_path / "kube" / "config"
    result = kc.merge_into(target, ours())
    assert result.changed and result.backup is None and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert yaml.safe_load(target.read_text())["current-context"] == "rack"
    assert not kc.merge_into(target, ours()).changed  # nothing to change: not written, no backup
    flow = '{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "x", "cluster": {"server": "https://x"}}], "contexts": [], "users": [], "current-context": "x"}\n'
    target.write_text(flow)
    os.chmod(target, 0o640)
    result = kc.merge_into(target, ours())
    assert result.changed and result.rewritten and result.backup.read_text() == flow
    data = yaml.safe_load(target.read_text())
    assert data["clusters"][0] == {"name": "x", "cluster": {"server": "https://x"}} and data["current-context"] == "x"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the user's mode is kept
    removed = kc.remove_from(target, "rack")
    assert removed.changed and [c["name"] for c in yaml.safe_load(target.read_text())["clusters"]] == ["x"]


def test_remove_clears_current_context_when_it_was_ours():
    text, _ = kc.merge_text("", ours(), "rack")
    removed, _ = kc.merge_text(text, None, "rack")
    data = yaml.safe_load(removed)
    assert data["current-context"] == "" and data["clusters"] == [] and data["users"] == []


def test_kubeconfig_target_honours_KUBECONFIG(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/one{os.pathsep}{tmp_path}/two")
    assert kc.default_target() == tmp_path / "one"
    monkeypatch.delenv("KUBECONFIG")
    assert kc.default_target().name == "config" and kc.default_target().parent.name == ".kube"


def test_stage_selection():
    assert select_stages(None, None, None) == list(STAGES)
    assert select_stages("k3s,prepare", None, None) == ["prepare", "k3s"]
    assert select_stages(None, "prepare", "k3s") == ["prepare", "k3s"]
    assert select_stages(None, "k3s", None) == ["k3s", "kubeconfig", "platform", "ray-external", "verify"]
    for bad in (("k3", None, None), (None, "kubeconfig", "prepare"), ("k3s", "prepare", None)):
        with pytest.raises(InputError):
            select_stages(*bad)


def test_runner_events_become_counts_and_messages():
    result, failures = PlaybookResult("k3s.yml"), {}
    _collect(
        {
            "event": "runner_on_failed",
            "event_data": {"host": "a", "task": "Say what to look at", "res": {"msg": "a did not become Ready"}},
        },
        result,
        failures,
    )
    _collect(
        {
            "event": "runner_on_failed",
            "event_data": {"host": "b", "task": "Write config", "res": {"censored": "the output has been hidden"}},
        },
        result,
        failures,
    )
    _collect(
        {
            "event": "runner_on_unreachable",
            "event_data": {"host": "c", "res": {"msg": "ssh: connect to host c port 22:\n timed out"}},
        },
        result,
        failures,
    )
    _collect(
        {"event": "runner_on_failed", "event_data": {"host": "d", "ignore_errors": True, "res": {"msg": "ignored"}}},
        result,
        failures,
    )
    _collect(
        {
            "event": "playbook_on_stats",
            "event_data": {"ok": {"a": 3, "d": 2}, "changed": {"a": 1}, "failures": {"a": 1, "b": 1}, "dark": {"c": 1}},
        },
        result,
        failures,
    )
    assert failures["a"] == "a did not become Ready"
    assert "hidden" in failures["b"] and "token" in failures["b"]
    assert failures["c"] == "unreachable: ssh: connect to host c port 22: timed out"
    assert "d" not in failures
    assert result.hosts["a"].changed == 1 and result.hosts["c"].unreachable == 1
    assert sorted(result.failed_hosts) == ["a", "b", "c"]


def test_ansible_ssh_uses_only_the_project_known_hosts(tmp_path):
    args = ssh_args(tmp_path / "my project/.piml/known_hosts", tmp_path / "cp")
    assert f"UserKnownHostsFile='{tmp_path}/my project/.piml/known_hosts'" in args
    assert "StrictHostKeyChecking=yes" in args and "GlobalKnownHostsFile=/dev/null" in args


def test_token_generated_once_0600_or_taken_from_the_inventory(tmp_path, piml):
    from piml.k3s.token import cluster_token
    from piml.project import ProjectPaths, load_cluster

    key = tmp_path / "key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
    assert piml("init", "p", "--ssh-key", str(key), "--node", "a=10.0.0.1", cwd=tmp_path).returncode == 0
    cluster = load_cluster(ProjectPaths.resolve(tmp_path / "p", None))
    token, source = cluster_token(cluster)
    assert source == "generated" and len(token) == 64
    path = tmp_path / "p/.piml/k3s-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cluster_token(cluster) == (token, ".piml/k3s-token")
    hosts = tmp_path / "p/inventory/hosts.yml"
    data = yaml.safe_load(hosts.read_text())
    data["k3s_cluster"]["vars"]["token"] = "given-token"
    hosts.write_text(yaml.safe_dump(data))
    assert cluster_token(load_cluster(ProjectPaths.resolve(tmp_path / "p", None))) == ("given-token", "inventory")


def test_cli_guards_and_dry_run_without_nodes(tmp_path, piml):
    key = tmp_path / "key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
    assert (
        piml(
            "init",
            "p",
            "--ssh-key",
            str(key),
            "--node",
            "s1=10.0.0.1:server",
            "--node",
            "s2=10.0.0.2:server",
            "--node",
            "s3=10.0.0.3:server",
            "--node",
            "a1=10.0.0.4",
            cwd=tmp_path,
        ).returncode
        == 0
    )
    project = tmp_path / "p"
    out = piml("teardown", cwd=project)  # the platform: there is no cluster yet
    assert out.returncode == 2 and "no kubeconfig" in out.stderr
    out = piml("teardown", "--k3s", cwd=project, input="")
    assert out.returncode == 2 and "--yes" in out.stderr
    out = piml("up", "--dry-run", "--from", "k3s", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "s1: k3s v1.36.3+k3s1 as first server with --cluster-init" in out.stdout
    assert "s2: k3s v1.36.3+k3s1 as server joining https://10.0.0.1:6443" in out.stdout
    assert "a1: k3s v1.36.3+k3s1 as agent joining" in out.stdout and "preflight" not in out.stdout
    assert "cannot plan yet" in out.stdout and "memory" in out.stdout  # no piml_memory_gb, nodes not reached
    assert not (project / ".piml/k3s-token").exists()
    (project / "piml.yaml").write_text("k3s:\n  airgap_dir: nowhere\n")
    out = piml("up", "--only", "k3s", cwd=project)
    assert out.returncode == 2 and "airgap_dir" in out.stderr and "not a directory" in out.stderr


def test_k3s_config_carries_the_plans_kubelet_reservations(tmp_path):
    """k3s_vars hands the plan's reservations to the playbook, and the playbook's own task (run here with a local
    connection) writes them into each node's config.yaml as kubelet-arg; without them, none is written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from piml.config import PimlConfig
    from piml.inventory import load_inventory
    from piml.k3s.stages import k3s_vars
    from piml.plan.capacity import kubelet_args
    from piml.plan.sizes import RESERVED
    from piml.project import Cluster, ProjectPaths

    repo = Path(__file__).resolve().parents[2]
    scenario = repo / "tests/render/scenarios/pi5-3x8gb.yml"
    cluster = Cluster(ProjectPaths(tmp_path, scenario), load_inventory(scenario), PimlConfig())
    extravars = k3s_vars(cluster, None, "test-token")
    assert extravars["piml_kubelet_args"] == kubelet_args(cluster)
    assert extravars["piml_kubelet_args"]["pi1"] == RESERVED["server"].kubelet_args()
    assert extravars["piml_kubelet_args"]["pi2"] == RESERVED["agent"].kubelet_args()

    tasks = yaml.safe_load((repo / "playbooks/tasks/k3s-probe.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Work out this node's k3s configuration")
    task.pop("no_log", None)
    out = tmp_path / "out"
    out.mkdir()
    playbook = [
        {
            "hosts": "all",
            "gather_facts": False,
            "vars": {
                "_role": "{{ 'server' if inventory_hostname in groups['server'] else 'agent' }}",
                "_first": "{{ inventory_hostname == 'pi1' }}",
                "_node": {"kind": "pi5"},
                "_tls_sans": ["10.0.0.1"],
                "_server_url": "https://10.0.0.1:6443",
                "extra_server_args": "",
                "extra_agent_args": "",
            },
            "tasks": [
                task,
                {
                    "name": "keep it",
                    "ansible.builtin.copy": {
                        "content": "{{ _config_text }}",
                        "dest": f"{out}/{{{{ inventory_hostname }}}}.yaml",
                    },
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    (tmp_path / "hosts.ini").write_text(
        f"[server]\npi1\n[agent]\npi2\n[all:vars]\nansible_connection=local\n"
        f"ansible_python_interpreter={sys.executable}\n"
    )
    ansible = Path(sys.executable).parent / "ansible-playbook"

    def run(variables: dict) -> dict[str, dict]:
        (tmp_path / "vars.json").write_text(json.dumps(variables))
        done = subprocess.run(
            [
                str(ansible),
                "-i",
                str(tmp_path / "hosts.ini"),
                str(tmp_path / "play.yml"),
                "-e",
                f"@{tmp_path}/vars.json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return {
            name: json.loads(
                "\n".join(line for line in (out / f"{name}.yaml").read_text().splitlines() if not line.startswith("#"))
            )
            for name in ("pi1", "pi2")
        }

    configs = run({"token": "test-token", "piml_kubelet_args": extravars["piml_kubelet_args"]})
    for name in ("pi1", "pi2"):
        assert configs[name]["kubelet-arg"] == extravars["piml_kubelet_args"][name]
        assert configs[name]["node-name"] == name and configs[name]["token"] == "test-token"
    plain = run({"token": "test-token"})  # the playbook run by hand, without piml's plan
    assert all("kubelet-arg" not in c for c in plain.values())
    assert {k: v for k, v in configs["pi2"].items() if k != "kubelet-arg"} == plain["pi2"]
