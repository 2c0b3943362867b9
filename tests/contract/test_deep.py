"""`piml check --deep`'s Ray job end to end on the rendered platform: submitted through a port-forward to the
head's dashboard with piml's token, it runs on a Ray worker KubeRay built, reaches MLflow by the Service address
the pods get (MLFLOW_TRACKING_URI, credentials from MLflow's Secret), trains and registers a model, and piml
reads it back through MLflow's port-forward.

The Ray job needs mlflow-skinny and scikit-learn. piml's default has the job pip-install them from PyPI, which a
pod here cannot reach; so this runs as README says for a Ray image that has them: `ray.check_pip: []`, with the
Ray mirror carrying those packages (said in the output)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from piml.commands.check import ray_pip
from piml.config import PimlConfig
from piml.health.deep import Deadline, train_and_register
from piml.health.endpoints import Endpoints
from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


def ray_pip_for(mlflow_version: str) -> list[str]:
    """What piml's default ray.check_pip installs, with the MLflow client matching the server mirror."""
    return ray_pip(SimpleNamespace(config=PimlConfig.model_validate({"mlflow": {"version": mlflow_version}})))


def test_the_ray_job_trains_and_registers_in_mlflow_by_service_name(pod_network, tmp_path):
    import importlib.metadata

    mlflow_version = importlib.metadata.version("mlflow")  # the server mirror's (images.mlflow picks the same)
    platform = start_platform(
        "pi5-3x8gb", {"ray": {"check_pip": []}}, tmp_path, pod_network, ray_extra=tuple(ray_pip_for(mlflow_version))
    )
    try:
        mlflow = platform.deployment("mlflow")
        head, workers = platform.ray_cluster()
        platform.kubelet.wait_probe(mlflow.container(), "readinessProbe", budget=120)
        platform.kubelet.wait_probe(head.container("ray-head"), "readinessProbe", budget=180)
        for worker in workers:
            platform.kubelet.wait_probe(worker.container(), "readinessProbe", budget=180)
        endpoints = Endpoints(
            mlflow_url=f"{platform.forward(mlflow, 5000).url}/mlflow",
            mlflow_user="admin",
            mlflow_password=platform.secret("mlflow", "admin-password"),
            ray_dashboard_url=platform.forward(head, 8265).url,
            ray_token=platform.secret("ray-auth", "auth_token"),
        )
        trained: dict = {}
        detail = train_and_register(endpoints, platform.cluster.config, [], Deadline(300), trained)
        assert "registered piml-check version" in detail, detail
        assert trained.get("node") not in (None, head.name), (
            f"the job's task ran on {trained.get('node')}, not a worker"
        )
    finally:
        platform.close()
