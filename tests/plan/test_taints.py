"""Inventory taints (piml_taints) and the plan: the platform's pods tolerate none, so a node with a NoSchedule or
NoExecute taint gets nothing of the platform; the real scheduler agrees (tests/platform/test_node_labels.py:
`piml up` with a tainted node converges)."""

from __future__ import annotations

import pytest

from piml.config import PimlConfig
from piml.errors import InputError
from piml.inventory.validate import parse_inventory_text
from piml.plan import make_plan
from piml.plan.pins import Pin
from piml.project import Cluster, ProjectPaths

INVENTORY = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {{ansible_host: 10.0.0.1{pi1}}}
    agent:
      hosts:
        pi2: {{ansible_host: 10.0.0.2{pi2}}}
        pi3: {{ansible_host: 10.0.0.3{pi3}}}
  vars: {{piml_model: pi5, piml_memory_gb: 8}}
"""


def plan_for(tmp_path, pins=None, **taints):
    text = INVENTORY.format(
        **{n: f", piml_taints: [{taints[n]!r}]" if n in taints else "" for n in ("pi1", "pi2", "pi3")}
    )
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    inventory = parse_inventory_text(text, "hosts.yml", path)
    return make_plan(Cluster(ProjectPaths(tmp_path, path), inventory, PimlConfig()), pins=pins)


def everything_on(plan) -> set[str]:
    return {p.node for p in plan.services} | {n for pool in plan.dask_workers + plan.ray_workers for n in pool.nodes}


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_a_tainted_node_gets_nothing_and_the_plan_says_so(tmp_path, effect):
    plan = plan_for(tmp_path, pi2=f"dedicated=ml:{effect}")
    assert "pi2" not in everything_on(plan) and {"pi1", "pi3"} <= everything_on(plan)
    assert f"pi2 has the taint dedicated=ml:{effect}: the platform places nothing there" in plan.notes


def test_prefer_no_schedule_is_only_a_preference(tmp_path):
    assert "pi2" in everything_on(plan_for(tmp_path, pi2="ml:PreferNoSchedule"))


def test_a_service_whose_volume_is_on_a_tainted_node_is_exit_2_with_the_fix(tmp_path):
    with pytest.raises(InputError) as caught:
        plan_for(tmp_path, pins={"redis": Pin("redis", "pi2", "redis-data")}, pi2="dedicated=ml:NoSchedule")
    (problem,) = caught.value.problems
    assert "redis's data is on node pi2" in problem.what and "taint dedicated=ml:NoSchedule" in problem.what
    assert "remove that taint" in problem.fix and "kubectl -n piml delete pvc redis-data" in problem.fix


def test_every_node_tainted_is_exit_2(tmp_path):
    with pytest.raises(InputError) as caught:
        plan_for(tmp_path, pi1="a:NoSchedule", pi2="b:NoSchedule", pi3="c:NoExecute")
    assert "nowhere to run" in str(caught.value.problems[0])
