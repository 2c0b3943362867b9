"""The upgrade's order and its refusals (Kubernetes' skew policy), and the piml.yaml pin edit, without nodes."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from piml.errors import InputError
from piml.k3s.pin import with_k3s_version
from piml.k3s.upgrade import parse_version, plan_upgrade

OLD, NEW = "v1.36.3+k3s1", "v1.37.0+k3s1"


def test_servers_one_at_a_time_then_agents_in_batches():
    running = dict.fromkeys(["s1", "s2", "s3", "a1", "a2", "a3"], OLD)
    plan = plan_upgrade(NEW, ["s1", "s2", "s3"], ["a1", "a2", "a3"], running, max_unavailable=2)
    assert plan.batches == [["s1"], ["s2"], ["s3"], ["a1", "a2"], ["a3"]]
    assert plan.already == []


def test_a_resumed_upgrade_skips_the_nodes_already_there():
    running = {"s1": NEW, "a1": NEW, "a2": OLD}
    plan = plan_upgrade(NEW, ["s1"], ["a1", "a2"], running, max_unavailable=1)
    assert plan.batches == [["a2"]] and plan.already == ["s1", "a1"]
    assert plan_upgrade(NEW, ["s1"], [], {"s1": NEW}, 1).batches == []


def test_a_patch_release_of_the_same_minor_is_an_upgrade():
    plan = plan_upgrade("v1.36.4+k3s1", ["s1"], [], {"s1": OLD}, 1)
    assert plan.batches == [["s1"]]
    assert plan_upgrade("v1.36.3+k3s2", ["s1"], [], {"s1": OLD}, 1).batches == [["s1"]]


@pytest.mark.parametrize(
    ("target", "running", "said"),
    [
        ("v1.38.0+k3s1", {"s1": OLD}, "skips minor versions"),  # the apiserver must not skip a minor
        ("v1.38.0+k3s1", {"s1": NEW, "a1": OLD}, "skips minor versions"),  # any node, agents too
        ("v1.35.9+k3s1", {"s1": OLD}, "does not downgrade"),
        ("v1.36.3+k3s1", {"s1": "v1.36.3+k3s2"}, "does not downgrade"),
        ("v2.0.0+k3s1", {"s1": OLD}, "another major version"),
        ("v1.37.0+k3s1", {"s1": "v1.37.0"}, "cannot read"),
        ("1.37.0", {"s1": OLD}, "is not a k3s release"),
    ],
)
def test_refusals_name_the_node_and_the_way(target, running, said):
    with pytest.raises(InputError) as caught:
        plan_upgrade(target, ["s1"], [n for n in running if n != "s1"], running, 1)
    text = str(caught.value.problems[0])
    assert said in text
    if "skips" in said:
        assert "v1.37" in text  # the step to take first


@given(st.text(max_size=30))
def test_parse_version_never_raises(text):
    version = parse_version(text)
    assert version is None or (text.strip().startswith("v") and "+k3s" in text)


# -- the pin in piml.yaml --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "k3s:\n  version: v1.36.3+k3s1  # pinned by us\n  airgap_dir: /srv/k3s\n# tail\n",
        "namespace: lab\nk3s:\n    airgap_dir: /srv/k3s   # where the files are\nmlflow:\n  enabled: false\n",
        "k3s:\n  version: 'v1.36.3+k3s1'\n",
        "mlflow: {enabled: false}\n",
        "mlflow:\n  enabled: false",  # no newline at the end
    ],
)
def test_the_pin_moves_and_the_rest_of_the_file_stays(text):
    edited = with_k3s_version(text, NEW)
    assert edited is not None
    data = yaml.safe_load(edited)
    assert data["k3s"]["version"] == NEW
    before = yaml.safe_load(text) or {}
    before.setdefault("k3s", {})["version"] = NEW
    assert data == before
    for line in text.splitlines():  # every comment is kept
        if "#" in line:
            assert line[line.index("#") :] in edited


@pytest.mark.parametrize("text", ["k3s: {version: v1.36.3+k3s1}\n", "k3s:\n", "[1, 2]\n", "k3s: [a]\n", "{k3s: {}}\n"])
def test_a_layout_it_cannot_edit_safely_is_left_alone(text):
    assert with_k3s_version(text, NEW) is None


_key = st.sampled_from(["k3s", "mlflow", "namespace", "version", "airgap_dir", "ray"])
_scalar = st.one_of(st.integers(), st.booleans(), st.text(max_size=8), st.none())
_tree = st.recursive(_scalar, lambda inner: st.dictionaries(_key, inner, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(_key, _tree, max_size=5), flow=st.booleans(), comment=st.booleans())
def test_fuzz_the_edit_is_exact_or_refused(data, flow, comment):
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False) if data else ""
    if comment:
        text = "# lab\n" + text
    edited = with_k3s_version(text, NEW)
    if edited is None:
        return
    wanted = dict(data)
    wanted["k3s"] = {**(data.get("k3s") or {}), "version": NEW}
    assert yaml.safe_load(edited) == wanted
