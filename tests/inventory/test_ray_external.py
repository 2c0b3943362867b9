"""`ray_external` hosts' piml_ray_* variables (#13): what a machine outside Kubernetes offers the cluster's Ray.
Each refused value is a line of the inventory with a fix; each accepted one is one the pinned Ray accepts
(test_ray_external_by_ray.py runs Ray's own rules on them)."""

from __future__ import annotations

import pytest

from piml.errors import InputError
from piml.inventory import Role, load_inventory

CLUSTER = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {ansible_host: 10.0.0.1}
"""


def test_a_mac_mini_and_a_gpu_box(write):
    path = write(
        "hosts.yml",
        CLUSTER
        + """
ray_external:
  vars:
    piml_ray_python: "3.11"
  hosts:
    mini:
      ansible_host: 10.0.0.50
      piml_ray_resources: {gpu_apple_mps: 1}
      piml_ray_num_cpus: 8
      piml_ray_memory_gb: 12
    box:
      ansible_host: 10.0.0.51
      piml_ray_num_gpus: 1
      piml_ray_resources: {"accelerator_type:RTX3060": 1, vram_gb: 12.0}
""",
    )
    inv = load_inventory(path)
    mini, box = inv.external
    assert mini.role is Role.EXTERNAL and mini.ray is not None and box.ray is not None
    assert mini.ray.as_dict() == {
        "resources": {"gpu_apple_mps": 1},
        "num_cpus": 8,
        "num_gpus": None,
        "memory_gb": 12.0,
        "python": "3.11",
    }
    assert (box.ray.num_gpus, box.ray.resources) == (1, {"accelerator_type:RTX3060": 1, "vram_gb": 12})
    assert inv.servers[0].ray is None and "ray" not in inv.servers[0].as_dict()


BROKEN = """k3s_cluster:
  children:
    server:
      hosts:
        pi1:
          ansible_host: 10.0.0.1
          piml_ray_num_cpus: 4
ray_external:
  hosts:
    mini:
      ansible_host: 10.0.0.50
      piml_ray_resources: {CPU: 8, "node:10.0.0.50": 1, half: 0.5, none: 0, word: many}
      piml_ray_num_gpus: -1
      piml_ray_memory_gb: true
      piml_ray_python: 3.10
      piml_ray_gpus: 1
"""


def test_every_refused_value_is_a_line_with_a_fix(write):
    path = write("hosts.yml", BROKEN)
    with pytest.raises(InputError) as info:
        load_inventory(path, "hosts.yml")
    assert [str(p) for p in info.value.problems] == [  # by line, then by text
        "hosts.yml:7: piml_ray_num_cpus of 'pi1' is for hosts in ray_external, and 'pi1' runs k3s; remove it, or "
        "move the host to the ray_external group",
        "hosts.yml:12: resource 'CPU' of 'mini' is set with its own variable; use piml_ray_num_cpus",
        "hosts.yml:12: resource 'half' of 'mini' is 0.5, and Ray counts a node's resources in whole positive "
        "numbers; for example `piml_ray_resources: {gpu_apple_mps: 1}`",
        "hosts.yml:12: resource 'node:10.0.0.50' of 'mini': names starting node: are Ray's own; choose another name",
        "hosts.yml:12: resource 'none' of 'mini' is 0, and Ray counts a node's resources in whole positive "
        "numbers; for example `piml_ray_resources: {gpu_apple_mps: 1}`",
        "hosts.yml:12: resource 'word' of 'mini' is 'many', and Ray counts a node's resources in whole positive "
        "numbers; for example `piml_ray_resources: {gpu_apple_mps: 1}`",
        "hosts.yml:13: piml_ray_num_gpus of 'mini' must be a whole number of GPUs, not '-1'; for example "
        "`piml_ray_num_gpus: 1`",
        "hosts.yml:14: piml_ray_memory_gb of 'mini' must be a number of GB, not 'True'; for example "
        "`piml_ray_memory_gb: 16`",
        "hosts.yml:15: piml_ray_python of 'mini' must be a Python version such as '3.11', not '3.1'; quote it "
        "(`piml_ray_python: '3.11'`: unquoted, YAML reads 3.10 as the number 3.1)",
        "hosts.yml:16: unknown piml variable 'piml_ray_gpus'; did you mean 'piml_ray_num_gpus'?",
    ]
