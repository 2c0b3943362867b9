"""How the runner reaches the cluster without an image build: its source in a ConfigMap.

The ScaledJob's pods run the MLflow image (Python, mlflow, pandas, pyarrow and scikit-learn are in it),
mount piml's runner modules from the ConfigMap `piml-runner` at /app/piml, and an init container
`pip install --target /extra` the broker client (redis or pika). PYTHONPATH=/app:/extra.
For clusters without PyPI access, images/runner/Dockerfile bakes the same into an image.
"""

from __future__ import annotations

from piml.render.source import SourceFile
from piml.render.source import source_files as _source_files

# Only these modules go to the cluster: the runner and what it imports (pure standard library besides
# mlflow/pandas and the broker client).
FILES = (
    "__init__.py",
    "errors.py",
    "client.py",
    "queue/__init__.py",
    "queue/base.py",
    "queue/request.py",
    "queue/redis_broker.py",
    "queue/rabbitmq.py",
    "runner/__init__.py",
    "runner/__main__.py",
    "runner/data.py",
)
# The broker clients the init container installs, pinned (runtime deps of piml itself: pyproject.toml).
PIP = {"redis": "redis==5.2.1", "rabbitmq": "pika==1.3.2"}


def source_files() -> list[SourceFile]:
    return _source_files(FILES)
