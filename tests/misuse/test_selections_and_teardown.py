"""Selections and teardown (issue 16): a --limit that selects no node is an error, never "every node"; a teardown
that could not reach a node fails; conflicting or blank options and a KUBECONFIG that is not a file are refused
before anything runs. The nodes are tripwires (tests/misuse/rack.py): a refused command must not have knocked anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.misuse import one_error
from tests.misuse.rack import OTHER_KUBECONFIG


def assert_usage_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """one_error, and nothing ran on a node."""
    line = one_error(out, *words)
    assert "running on" not in out.stdout, out.stdout
    return line


# -- 1. a selection that selects no node is an error, in every command that takes --limit -------------------------

COMMANDS_WITH_LIMIT = {
    "teardown --k3s": ("teardown", "--k3s", "--yes"),
    "up": ("up",),
    "up --only preflight": ("up", "--only", "preflight"),
    "up --dry-run": ("up", "--dry-run"),
    "status": ("status",),
    "check": ("check",),
}
BLANK_LIMITS = ["", " ", ",", " , ,"]


@pytest.mark.parametrize("blank", BLANK_LIMITS, ids=repr)
@pytest.mark.parametrize("command", COMMANDS_WITH_LIMIT, ids=str)
def test_a_blank_limit_is_an_error_not_every_node(rack, command, blank):
    out = rack.piml(*COMMANDS_WITH_LIMIT[command], "--limit", blank)
    line = assert_usage_error(out, "--limit")
    assert "--limit" in line.split(";")[0] and "every node" in line  # where, what, and how to fix
    assert rack.knocks() == {}, "a node was reached"
    assert rack.kubeconfig.read_text() == OTHER_KUBECONFIG


@pytest.mark.parametrize("limit", ["external", "mac"])
@pytest.mark.parametrize("command", ["teardown --k3s", "check"], ids=str)
def test_a_limit_of_only_ray_external_hosts_selects_no_k3s_node(rack, command, limit):
    """teardown --k3s and check act on k3s nodes only: ray_external hosts alone leave nothing, not everything."""
    out = rack.piml(*COMMANDS_WITH_LIMIT[command], "--limit", limit)
    assert_usage_error(out, "--limit", "ray_external")
    assert rack.knocks() == {}


def test_limit_without_k3s_is_refused(rack):
    """The platform teardown is cluster-wide: a --limit there would be silently ignored, and delete everything."""
    (rack.root / ".piml/kubeconfig").write_text(OTHER_KUBECONFIG)
    out = rack.piml("teardown", "--yes", "--limit", "a1")
    assert_usage_error(out, "--limit", "--k3s")
    assert rack.knocks() == {}


def test_select_nodes_blank_is_an_error_none_is_all():
    from piml.errors import InputError
    from piml.inventory import Node, Role
    from piml.reach import select_nodes

    nodes = [
        Node(name="s1", address="127.0.0.1", role=Role.SERVER),
        Node(name="a1", address="127.0.0.2", role=Role.AGENT),
        Node(name="mac", address="127.0.0.3", role=Role.EXTERNAL),
    ]
    assert select_nodes(nodes, None) == nodes
    assert [n.name for n in select_nodes(nodes, " a1 , server")] == ["s1", "a1"]  # inventory order
    assert [n.name for n in select_nodes(nodes, None, k3s_only=True)] == ["s1", "a1"]
    for blank in BLANK_LIMITS:
        with pytest.raises(InputError, match="--limit"):
            select_nodes(nodes, blank)
    with pytest.raises(InputError, match="ray_external"):
        select_nodes(nodes, "mac", k3s_only=True)


@pytest.mark.parametrize("hosts", [[], ["all"], ["pi1", "agent"]], ids=repr)
def test_run_playbook_never_hands_ansible_a_limit_wider_than_its_hosts(monkeypatch, tmp_path, hosts):
    """The last guard: to Ansible an empty --limit means every host, and a group's name its whole group."""
    from types import SimpleNamespace

    import ansible_runner

    from piml.ansible.runner import run_playbook
    from piml.project import ProjectPaths

    cluster = SimpleNamespace(paths=ProjectPaths(tmp_path, tmp_path / "hosts.yml"))
    monkeypatch.setattr(
        ansible_runner, "run", lambda **kw: pytest.fail(f"ansible ran with --limit {kw.get('limit')!r}")
    )
    result = run_playbook(cluster, "teardown.yml", hosts, {})
    assert not result.ok and "not run" in result.error


# -- 2. a teardown that could not reach a node fails ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, "a1"])
def test_teardown_k3s_fails_when_nodes_are_unreachable(rack, limit):
    stored = rack.root / ".piml/kubeconfig"
    stored.write_text(OTHER_KUBECONFIG)
    out = rack.piml("teardown", "--k3s", "--yes", "--json", *(["--limit", limit] if limit else []))
    said = out.stdout + out.stderr
    assert out.returncode == 1, f"exit {out.returncode}:\n{said[-3000:]}"
    assert json.loads(out.stdout)["ok"] is False
    assert "Traceback" not in said and "internal error" not in said
    targets = ["a1"] if limit else ["s1", "a1"]
    for name in targets:
        assert f"{name}: unreachable" in out.stderr and f"piml teardown --k3s --limit {name}" in out.stderr, out.stderr
    # Ansible tried them (an agent's drain goes through the first server); the ray_external host only when the
    # whole cluster goes (its Ray worker goes with it), and then it is a warning, not one of the failures
    assert set(targets) <= set(rack.knocks()) <= ({"s1", "a1"} if limit else {"s1", "a1", "mac"})
    assert "mac" not in json.loads(out.stdout)["teardown"]["failures"]
    # k3s may still run on the servers: the context and the stored kubeconfig stay
    assert rack.kubeconfig.read_text() == OTHER_KUBECONFIG and stored.exists()


# -- 3. --purge with --k3s -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, "a1"])
def test_teardown_purge_with_k3s_is_refused(rack, limit):
    (rack.root / ".piml/kubeconfig").write_text(OTHER_KUBECONFIG)
    out = rack.piml("teardown", "--k3s", "--purge", "--yes", *(["--limit", limit] if limit else []))
    assert_usage_error(out, "--purge", "--k3s")
    assert rack.knocks() == {}
    assert rack.kubeconfig.read_text() == OTHER_KUBECONFIG


# -- 4. KUBECONFIG that is not a kubeconfig file, noticed before the play ----------------------------------------


@pytest.mark.parametrize("command", [("teardown", "--k3s", "--yes"), ("up",)], ids=" ".join)
@pytest.mark.parametrize("kind", ["directory", "fifo", "not yaml", "a list"])
def test_a_kubeconfig_that_is_not_a_file_is_refused_before_any_node_is_touched(rack, tmp_path, kind, command):
    target = tmp_path / "kubeconfig-target"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)  # reading it would block forever
    else:
        target.write_text("clusters: [unclosed\n" if kind == "not yaml" else "- a\n- b\n")
    before = target.read_text() if target.is_file() else None
    out = rack.piml(*command, kubeconfig=target, timeout=60)
    assert_usage_error(out, str(target), "KUBECONFIG")
    assert rack.knocks() == {}, "a node was reached before KUBECONFIG was checked"
    if before is not None:
        assert target.read_text() == before


# -- 5. blank stages, nonsense intervals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--only", ""),
        ("--only", " "),
        ("--only", ","),
        ("--from", ""),
        ("--until", " "),
        ("--from", "k3s,platform"),
        ("--until", "prepare,k3s"),
    ],
    ids=repr,
)
def test_up_refuses_blank_or_several_stages(rack, args):
    out = rack.piml("up", *args)
    assert_usage_error(out, args[0])
    assert rack.knocks() == {}


@pytest.mark.parametrize("interval", ["-1", "0", "0.5", "nan", "inf", "-inf"])
@pytest.mark.parametrize("watch", [False, True])
def test_status_refuses_a_nonsense_interval(rack, interval, watch):
    out = rack.piml("status", *(["--watch"] if watch else []), "--interval", interval, timeout=30)
    assert_usage_error(out, "--interval")
    assert rack.knocks() == {}
