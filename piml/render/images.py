"""Which image each component runs: pinned tags, never `latest`, the right one per architecture."""

from __future__ import annotations

# Multi-arch images (amd64 + arm64), pinned. Re-check a tag before changing it.
REDIS = "redis:7.4.1"
POSTGRES = "postgres:16.4"
MINIO = "minio/minio:RELEASE.2024-10-13T13-34-11Z"
RABBITMQ = "rabbitmq:3.13.7-management"
# One Python for every image that runs user code: Dask and Ray ship pickled functions between clients, schedulers
# and workers, and cloudpickle's code objects do not cross Python minor versions. The MLflow image (the runner's)
# is python:3.11-slim; Ray and Dask publish per-Python tags.
PYTHON = "3.11"
PYTHON_TAG = "py" + PYTHON.replace(".", "")  # Ray's tag form (py311)


def mlflow(version: str) -> str:
    return f"ghcr.io/mlflow/mlflow:v{version}"


def dask(version: str) -> str:
    """The tag without -pyX.Y is the Python 3.10 build (dask-docker's build.yml: defaultpython 3.10)."""
    return f"ghcr.io/dask/dask:{version}-py{PYTHON}"


def ray(version: str, arch: str) -> str:
    """Ray publishes no multi-arch manifest: no suffix is amd64 only, arm64 needs `-aarch64`."""
    return f"rayproject/ray:{version}-{PYTHON_TAG}" + ("-aarch64" if arch == "arm64" else "")


# What the MLflow pods add to the plain `pip install mlflow` image, each pinned with its dependencies that the
# image lacks, installed with --no-deps into a volume: an unpinned `pip install --target` pulls a second Flask
# stack ahead of the image's own (--target implies --ignore-installed). Re-check against the image on a bump.
MLFLOW_EXTRA = {
    "auth": ["Flask-WTF==1.3.0", "WTForms==3.3.2"],  # --app-name basic-auth
    # SQLAlchemy 2.1 (in the image) maps postgresql:// to psycopg 3, not psycopg2
    "postgresql": ["psycopg==3.3.9", "psycopg-binary==3.3.9"],
    "s3": ["boto3==1.44.5", "botocore==1.44.5", "s3transfer==0.19.3", "jmespath==1.1.0"],
}


def model_pip(mlflow_version: str) -> list[str]:
    """What a Ray process needs beyond the Ray image to load a registered scikit-learn model: an MLflow client
    matching the server, scikit-learn, skops (MLflow 3 saves scikit-learn models with it; mlflow-skinny does not
    bring it) and pandas. Ray installs them into a runtime_env, which needs PyPI from the cluster."""
    return [f"mlflow-skinny=={mlflow_version}", "scikit-learn", "skops<1", "pandas"]
