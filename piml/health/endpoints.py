"""Where each component answers, as URLs on this machine.

Probes and deep checks only ever see these URLs, so the same code runs against local services (tests,
`piml check --url ...`) and against a cluster, where `open_cluster_endpoints` bridges loopback ports to
the components' pods with the Kubernetes API's port-forward. (The API's service proxy is not used: it
strips the Authorization header, so MLflow's basic auth cannot pass it - kubernetes/kubernetes#34076 - and
it cannot carry Redis, AMQP or Dask's TCP protocol at all.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Endpoints:
    mlflow_url: str | None = None  # base URL of the tracking server, prefix included (…/mlflow)
    mlflow_user: str | None = None
    mlflow_password: str | None = field(default=None, repr=False)
    mlflow_url_inside: str | None = None  # the same server as pods see it (for Ray jobs and runners)
    dask_dashboard_url: str | None = None  # http://host:8787
    # Runs a Python script beside the Dask scheduler and returns its stdout (raises CheckFailed on failure):
    # a subprocess here for local services, `kubectl exec` into the scheduler's pod in a cluster, so the
    # Dask client is the cluster's own version, whatever is installed on this machine. The script finds
    # the scheduler at $DASK_SCHEDULER_ADDRESS, default tcp://127.0.0.1:8786.
    dask_python: Callable[[str], str] | None = field(default=None, repr=False)
    ray_dashboard_url: str | None = None  # http://host:8265
    ray_token: str | None = field(default=None, repr=False)  # Ray's token authentication (Bearer)
    serve_url: str | None = None  # Ray Serve's HTTP proxy: routes at {serve_url}/serve/<route>
    serve_token: str | None = field(default=None, repr=False)  # every route request carries it (Bearer)
    queue_url: str | None = None  # redis://… or amqp://…
    queue_password: str | None = field(default=None, repr=False)
    unreachable: dict[str, str] = field(default_factory=dict)  # component -> why it has no URL (a cluster's)
