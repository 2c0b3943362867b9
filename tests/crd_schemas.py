"""The CRD schemas in ../shared/schemas (RayCluster, ScaledJob, HelmChart), as validators for rendered objects.

Read from ../shared beside the checkout (as CI has it), never copied; PIML_SHARED overrides. RayService's is not
in ../shared: it comes from the KubeRay operator's own Go module at the version the control plane builds
(config/crd/bases), downloaded through the Go module proxy into the control plane's cache when missing."""

from __future__ import annotations

import os
import subprocess
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
FROM_KUBERAY_MODULE = {("ray.io/v1", "RayService"): "ray.io_rayservices.yaml"}


def kuberay_module_crd(file: str) -> Path:
    """A CRD file of the KubeRay operator module (the control plane's version), downloaded when missing."""
    from tests.controlplane import addons, build
    from tests.controlplane.chart_jobs import KUBERAY_MODULE_CRDS

    path = KUBERAY_MODULE_CRDS / file
    if path.is_file():
        return path
    go = build.find_go()
    if go is None:
        pytest.fail(f"{path} is missing and Go is not installed to download the KubeRay module")
    module = f"github.com/ray-project/kuberay/ray-operator@{addons.KUBERAY_VERSION}"
    result = subprocess.run(
        [go, "mod", "download", "-json", module], env=build.go_env(), capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or not path.is_file():
        pytest.fail(f"could not download {module} for {file}: {(result.stderr or result.stdout).strip()[-500:]}")
    return path


@cache
def crd_validator(api_version: str, kind: str):
    """A validator for the kind's openAPIV3Schema at that version. The schema is checked once per process:
    jsonschema.validate() checks it on every call, seconds for one as large as RayCluster's."""
    import jsonschema

    if (api_version, kind) in FROM_KUBERAY_MODULE:
        path = kuberay_module_crd(FROM_KUBERAY_MODULE[(api_version, kind)])
    else:
        path = SCHEMAS / CRDS[(api_version, kind)]
    if not path.is_file():
        pytest.fail(f"CRD schema not found at {path}: put shared/ beside the checkout or set PIML_SHARED")
    doc = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    schema = next(v for v in doc["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)
