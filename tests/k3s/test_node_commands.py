"""piml node add/remove without nodes: the inventory edits (comments kept, exact or refused), the refusals that
need the cluster's answers (a volume on the node, etcd quorum), and bad input."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from piml.inventory.edit import with_host, without_host

INVENTORY = """\
# rack A
k3s_cluster:
  children:
    server:
      hosts:
        pi1:
          ansible_host: 10.0.0.1   # the first board
    agent:
      hosts:
        pi2:
          ansible_host: 10.0.0.2
          piml_labels: {disk: nvme}
        # pi3 is in repair
        pi4:
          ansible_host: 10.0.0.4
  vars:
    ansible_user: pi
"""


def test_add_then_remove_gives_back_the_same_text():
    added = with_host(INVENTORY, "agent", "pi5", "10.0.0.5")
    assert added is not None
    assert yaml.safe_load(added)["k3s_cluster"]["children"]["agent"]["hosts"]["pi5"] == {"ansible_host": "10.0.0.5"}
    assert "# rack A\n" in added and "# the first board" in added and "# pi3 is in repair" in added
    assert without_host(added, "agent", "pi5") == INVENTORY


def test_remove_keeps_the_other_hosts_and_comments():
    edited = without_host(INVENTORY, "agent", "pi2")
    assert edited is not None
    hosts = yaml.safe_load(edited)["k3s_cluster"]["children"]["agent"]["hosts"]
    assert hosts == {"pi4": {"ansible_host": "10.0.0.4"}}
    assert "# the first board" in edited


@pytest.mark.parametrize(
    "text",
    [
        "k3s_cluster: {children: {agent: {hosts: {pi2: {ansible_host: 1.2.3.4}}}}}\n",  # flow style
        "k3s_cluster:\n  children:\n    agent:\n      hosts: [pi2]\n",
        "[1]\n",
        "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1: {}\n",  # no agent group
    ],
)
def test_a_layout_it_cannot_edit_is_left_alone(text):
    assert with_host(text, "agent", "pi9", "10.0.0.9") is None
    assert without_host(text, "agent", "pi2") is None


_name = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(_name, min_size=1, max_size=4, unique=True),
    new=_name,
    comment=st.booleans(),
    address=st.sampled_from(["10.0.0.9", "pi9.local", "fe80::1", "2001:db8::5"]),
)
def test_fuzz_edits_are_exact_or_refused(names, new, comment, address):
    hosts = {name: {"ansible_host": f"10.0.1.{i}"} for i, name in enumerate(names)}
    data = {"k3s_cluster": {"children": {"server": {"hosts": {"s1": {}}}, "agent": {"hosts": hosts}}}}
    text = ("# kept\n" if comment else "") + yaml.safe_dump(data, sort_keys=False)
    added = with_host(text, "agent", new, address)
    if new in names:
        assert added is None or yaml.safe_load(added)["k3s_cluster"]["children"]["agent"]["hosts"][new]
    elif added is not None:
        assert yaml.safe_load(added)["k3s_cluster"]["children"]["agent"]["hosts"] == {
            **hosts,
            new: {"ansible_host": address},
        }
    removed = without_host(text, "agent", names[0])
    assert removed is not None
    left = yaml.safe_load(removed)["k3s_cluster"]["children"]["agent"]["hosts"]
    assert left == {k: v for k, v in hosts.items() if k != names[0]}


class CannedKube:
    """Answers two list requests as an API server would; for the refusal logic only."""

    def __init__(self, answers: dict[str, dict]):
        self.answers = answers

    def request(self, method, path, query=None):
        return self.answers[path]


def _cluster(tmp_path, piml, servers=1):
    from piml.project import ProjectPaths, load_cluster

    args = ["init", "lab", "--yes"]
    for i in range(servers):
        args += ["--node", f"s{i + 1}=10.0.0.{i + 1}:server"]
    args += ["--node", "a1=10.0.0.9:agent"]
    assert piml(*args, cwd=tmp_path).returncode == 0
    return load_cluster(ProjectPaths.resolve(tmp_path / "lab", None))


def test_a_volume_on_the_node_is_a_refusal_naming_the_claim_and_the_way(tmp_path, piml):
    from piml.commands.node import _volumes_on

    cluster = _cluster(tmp_path, piml)
    claim = {"metadata": {"name": "mlflow-data", "uid": "u1"}}
    volume = {
        "spec": {
            "claimRef": {"namespace": "piml", "name": "mlflow-data", "uid": "u1"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a1"]}]}
                    ]
                }
            },
        }
    }
    kube = CannedKube(
        {
            "/api/v1/namespaces/piml/persistentvolumeclaims": {"items": [claim]},
            "/api/v1/persistentvolumes": {"items": [volume]},
        }
    )
    problems = _volumes_on(kube, cluster, "a1")
    assert len(problems) == 1 and "mlflow-data" in str(problems[0]) and "piml backup" in str(problems[0])
    assert _volumes_on(kube, cluster, "s1") == []


def _node(name, ready):
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_quorum_counts_the_servers_left(tmp_path, piml):
    from piml.commands.node import _quorum

    cluster = _cluster(tmp_path, piml, servers=3)
    healthy = CannedKube({"/api/v1/nodes": {"items": [_node("s1", True), _node("s2", True), _node("s3", True)]}})
    assert _quorum(healthy, cluster, "s3") == []  # two left, both Ready: a majority of two
    one_down = CannedKube({"/api/v1/nodes": {"items": [_node("s1", True), _node("s2", False), _node("s3", True)]}})
    problems = _quorum(one_down, cluster, "s3")
    assert problems and "etcd needs 2 for quorum" in str(problems[0])


def test_bad_input_is_one_line_exit_2(tmp_path, piml):
    _cluster(tmp_path, piml)
    project = str(tmp_path / "lab")
    for args, said in (
        (["node", "add", "bad name=1.2.3.4"], "--node"),
        (["node", "add", "x9=10.0.0.9"], "has the address 10.0.0.9"),
        (["node", "add", "s2=10.0.0.2:server"], "SQLite"),
        (["node", "add", "e1=10.0.0.7:external"], "servers and agents"),
        (["node", "remove", "s1", "--yes"], "is the only server"),
        (["node", "remove", "a1", "--yes"], "no kubeconfig"),
    ):
        out = piml(*args, "-C", project)
        assert out.returncode == 2 and said in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_first_server_going_points_the_kubeconfig_at_the_next(tmp_path, piml):
    """Before the first server stops, .piml/kubeconfig is pointed at the next server (same CA and client
    certificate: k3s servers share them); a kubeconfig piml cannot read is one line, nothing written."""
    from piml.commands.node import _reach_through_successor
    from piml.errors import PimlError
    from piml.k3s import kubeconfig as kc

    cluster = _cluster(tmp_path, piml, servers=3)
    path = cluster.paths.kubeconfig
    written = kc.for_project(
        "clusters: [{cluster: {server: x}}]\nusers: [{user: {token: t}}]\n", "lab", "https://10.0.0.1:6443"
    )
    path.write_text(kc.dump(written))
    s1, s2, _s3, a1 = cluster.inventory.nodes
    assert _reach_through_successor(cluster, s2) is None and _reach_through_successor(cluster, a1) is None
    assert yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"] == "https://10.0.0.1:6443"
    assert _reach_through_successor(cluster, s1) == "s2"
    after = yaml.safe_load(path.read_text())
    assert after["clusters"][0]["cluster"]["server"] == "https://10.0.0.2:6443"
    assert after["users"] == written["users"] and path.stat().st_mode & 0o777 == 0o600
    path.write_text("[not a kubeconfig\n")
    with pytest.raises(PimlError) as caught:
        _reach_through_successor(cluster, s1)
    assert "cannot point it at https://10.0.0.2:6443" in str(caught.value.problems[0])
    assert path.read_text() == "[not a kubeconfig\n"
