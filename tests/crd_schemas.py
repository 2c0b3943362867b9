"""The CRD schemas in ../shared/schemas (RayCluster, ScaledJob, HelmChart), as validators for rendered objects.

Read from ../shared beside the checkout (as CI has it), never copied; PIML_SHARED overrides."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("PIML_SHARED", REPO.parent / "shared")) / "schemas"
CRDS = {
    ("helm.cattle.io/v1", "HelmChart"): "helm.cattle.io_helmcharts.yaml",
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("keda.sh/v1alpha1", "ScaledJob"): "keda.sh_scaledjobs.yaml",
}


@cache
def crd_validator(api_version: str, kind: str):
    """A validator for the kind's openAPIV3Schema at that version. The schema is checked once per process:
    jsonschema.validate() checks it on every call, seconds for one as large as RayCluster's."""
    import jsonschema

    path = SCHEMAS / CRDS[(api_version, kind)]
    if not path.is_file():
        pytest.fail(f"CRD schema not found at {path}: put shared/ beside the checkout or set PIML_SHARED")
    doc = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    schema = next(v for v in doc["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)
