"""The pinned Ray's own rules for a node's resources, run on every `ray_external` host piml accepts (#13): what
piml lets through, `ray start` takes unchanged."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from piml.errors import InputError
from piml.inventory.validate import parse_inventory_text
from tests.fuzzing import examples
from tests.inventory.test_ray_external import CLUSTER

quantities = st.one_of(
    st.integers(-3, 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.dictionaries(st.text(max_size=10), quantities, max_size=4),
    st.one_of(st.none(), st.integers(-2, 2000)),
    st.one_of(st.none(), st.integers(-2, 2000)),
)
def test_what_piml_accepts_ray_accepts(resources, cpus, gpus):
    """Ray 2.60's own check of a node's resources (ResourceAndLabelSpec.to_resource_dict, which `ray start` runs)
    takes everything piml lets through, unchanged."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    host = {"ansible_host": "10.0.0.50", "piml_ray_resources": resources}
    host.update({k: v for k, v in (("piml_ray_num_cpus", cpus), ("piml_ray_num_gpus", gpus)) if v is not None})
    text = CLUSTER + yaml.safe_dump({"ray_external": {"hosts": {"mini": host}}})
    try:
        inv = parse_inventory_text(text, "hosts.yml", Path("/tmp/x/hosts.yml"))
    except InputError as exc:
        assert all("\n" not in str(p) and str(p).startswith("hosts.yml:") for p in exc.problems)
        return
    ray = inv.external[0].ray
    assert ray is not None
    spec = ResourceAndLabelSpec(
        num_cpus=ray.num_cpus or 1,
        num_gpus=ray.num_gpus or 0,
        memory=2**30,
        object_store_memory=2**28,
        resources=dict(ray.resources),
        labels={},
    )
    spec._is_resolved = True  # what resolve() does first: detect what is unset (here everything is set)
    given_to_ray = spec.to_resource_dict()
    assert {k: v for k, v in given_to_ray.items() if k in ray.resources} == ray.resources
