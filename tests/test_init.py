"""`piml init` in both modes, file modes, refusals, and never a half-written project."""

import json
import os
import stat
import subprocess

import pytest

from piml.inventory import Role, load_inventory
from piml.scaffold import init_project, parse_node_spec


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_non_interactive(piml, tmp_path):
    out = piml(
        "init",
        "rack",
        "--node",
        "pi1=198.18.0.11",
        "--node",
        "pi2=198.18.0.12",
        "--node",
        "cp=198.18.0.10:server",
        "--node",
        "mac=198.18.0.50:external",
        "--user",
        "ubuntu",
        "--model",
        "cm4",
        "--memory-gb",
        "4",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    root = tmp_path / "rack"
    assert mode(root / ".piml") == 0o700
    assert mode(root / ".piml/id_ed25519") == 0o600
    assert (root / ".piml/id_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    assert ".piml/" in (root / ".gitignore").read_text()
    inv = load_inventory(root / "inventory/hosts.yml")
    roles = {n.name: n.role for n in inv.nodes}
    # A node named server takes that role; the others default to agents.
    assert roles == {"cp": Role.SERVER, "pi1": Role.AGENT, "pi2": Role.AGENT, "mac": Role.EXTERNAL}
    assert all(n.user == "ubuntu" and n.key_file == root.resolve() / "inventory/../.piml/id_ed25519" for n in inv.nodes)
    assert all(n.model == "cm4" and n.memory_gb == 4 for n in inv.cluster_nodes)
    # Ansible reads what we wrote, with the same groups.
    listed = json.loads(
        subprocess.run(
            ["ansible-inventory", "-i", "inventory/hosts.yml", "--list"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert listed["server"]["hosts"] == ["cp"] and listed["ray_external"]["hosts"] == ["mac"]
    # The scaffolded piml.yaml is valid and means the defaults.
    assert piml("inventory", "check", "-C", "rack", cwd=tmp_path).returncode == 0


def test_first_node_is_the_server_by_default(piml, tmp_path):
    assert piml("init", str(tmp_path / "p"), "-n", "a=10.0.0.1", "-n", "b=10.0.0.2").returncode == 0
    inv = load_inventory(tmp_path / "p/inventory/hosts.yml")
    assert [(n.name, n.role) for n in inv.nodes] == [("a", Role.SERVER), ("b", Role.AGENT)]


def test_interactive(piml, tmp_path):
    answers = "alice\npi1=10.0.0.1\nnot a node!\npi2=10.0.0.2:agent\n\n"
    out = piml("init", "rack", cwd=tmp_path, input=answers)
    assert out.returncode == 0, out.stderr
    assert "is not a valid host name" in out.stdout  # the bad line was explained and asked again
    inv = load_inventory(tmp_path / "rack/inventory/hosts.yml")
    assert [(n.name, n.user) for n in inv.nodes] == [("pi1", "alice"), ("pi2", "alice")]


def test_no_nodes_without_a_terminal_is_an_error(piml, tmp_path):
    out = piml("init", "rack", cwd=tmp_path, input="")
    assert out.returncode == 2 and "no nodes given" in out.stderr
    assert not (tmp_path / "rack").exists()


def test_refuses_existing_project_then_force_keeps_key(piml, tmp_path):
    assert piml("init", "p", "-n", "a=10.0.0.1", cwd=tmp_path).returncode == 0
    key = (tmp_path / "p/.piml/id_ed25519").read_bytes()
    before = (tmp_path / "p/inventory/hosts.yml").read_text()
    out = piml("init", "p", "-n", "b=10.0.0.2", cwd=tmp_path)
    assert out.returncode == 2 and "already a piml project" in out.stderr and "--force" in out.stderr
    assert (tmp_path / "p/inventory/hosts.yml").read_text() == before
    assert piml("init", "p", "-n", "b=10.0.0.2", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "p/.piml/id_ed25519").read_bytes() == key  # the nodes trust this key: kept
    assert (tmp_path / "p/inventory/hosts.yml.bak").read_text() == before
    assert [n.name for n in load_inventory(tmp_path / "p/inventory/hosts.yml").nodes] == ["b"]


def test_existing_key(piml, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True, timeout=30)
    assert piml("init", "p", "-n", "a=10.0.0.1", "--ssh-key", str(tmp_path / "k"), cwd=tmp_path).returncode == 0
    assert not (tmp_path / "p/.piml/id_ed25519").exists()
    (node,) = load_inventory(tmp_path / "p/inventory/hosts.yml").nodes
    assert node.key_file == tmp_path / "k"
    (tmp_path / "notakey").write_text("hello")
    out = piml("init", "q", "-n", "a=10.0.0.1", "--ssh-key", str(tmp_path / "notakey"), cwd=tmp_path)
    assert out.returncode == 2 and "not a private key" in out.stderr and not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "pi1=10.0.0.300"], "'10.0.0.300' is not an IP address or host name"),
        (["-n", "Pi_1=10.0.0.1"], "node name 'Pi_1' is not a valid host name"),
        (["-n", "a=10.0.0.1:boss"], "unknown role 'boss'"),
        (["-n", "a=10.0.0.1", "-n", "a=10.0.0.2"], "node 'a' is given twice"),
        (["-n", "a=10.0.0.1:agent"], "no server among the nodes"),
        (["-n", "a=10.0.0.1", "--model", "pi4"], "unknown model 'pi4'"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(piml, tmp_path, args, message):
    out = piml("init", "p", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "p").exists()


def test_ipv6_and_bare_names():
    assert parse_node_spec("pi1=fd00::11:server") == parse_node_spec("pi1=[fd00::11]:server")
    assert parse_node_spec("pi1=fd00::11").address == "fd00::11"
    assert parse_node_spec("pi1.lan").address == "pi1.lan"


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    """A crash while moving files into place rolls back: no half-written project."""
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        init_project(tmp_path / "p", [parse_node_spec("a=10.0.0.1")], "pi", None, None, False)
    assert not (tmp_path / "p").exists()

    # The same inside an existing directory: it is left as it was.
    (tmp_path / "q").mkdir()
    (tmp_path / "q/notes.txt").write_text("mine")
    calls.clear()
    with pytest.raises(OSError):
        init_project(tmp_path / "q", [parse_node_spec("a=10.0.0.1")], "pi", None, None, False)
    leftovers = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert leftovers == ["notes.txt"]


def test_yes_never_asks(piml, tmp_path):
    """Every command that asks takes -y/--yes; init's only question without a default is the nodes."""
    out = piml("init", "p", "--yes", cwd=tmp_path)
    assert out.returncode == 2 and "--yes and no --node" in out.stderr and not (tmp_path / "p").exists()
    assert piml("init", "p", "-y", "--node", "pi1=10.0.0.1", cwd=tmp_path).returncode == 0
