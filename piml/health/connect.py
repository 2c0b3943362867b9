"""Endpoints for a cluster: loopback ports bridged to the components' pods through the Kubernetes API.

Each component's pod is found by its `app.kubernetes.io/name` label; a component that cannot be reached
(no ready pod, the API refusing) is left without a URL and the reason kept, so its probes say why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from piml.errors import PimlError
from piml.health.endpoints import Endpoints
from piml.health.result import CheckFailed

if TYPE_CHECKING:
    from piml.project import Cluster

MLFLOW_PORT, DASK_DASHBOARD_PORT, RAY_DASHBOARD_PORT = 5000, 8787, 8265
# KubeRay's own labels: it needs app.kubernetes.io/name=kuberay on the head for its Service
RAY_HEAD_SELECTOR = "ray.io/cluster=ray,ray.io/node-type=head"
EXEC_TIMEOUT = 300  # the deep check's Dask computation


@contextmanager
def open_cluster_endpoints(cluster: Cluster) -> Iterator[Endpoints]:
    from piml.kube.client import core_api
    from piml.queue.tunnel import forward, open_tunnel
    from piml.secrets import load_or_create

    path = cluster.paths.kubeconfig
    config, namespace = cluster.config, cluster.config.namespace
    api = core_api(path, cluster.paths.show(path))
    endpoints = Endpoints()
    closers: list[Callable[[], None]] = []

    def bridge(component: str, selector: str, port: int) -> str | None:
        try:
            forwarder = forward(api, namespace, selector, port, component)
        except PimlError as exc:
            endpoints.unreachable[component] = str(exc.problems[0])
            return None
        closers.append(forwarder.close)
        return f"http://127.0.0.1:{forwarder.port}"

    try:
        if config.mlflow.enabled and (base := bridge("mlflow", "app.kubernetes.io/name=mlflow", MLFLOW_PORT)):
            endpoints.mlflow_url = base + "/mlflow"  # served under the ingress prefix (--static-prefix)
            endpoints.mlflow_user = "admin"
            endpoints.mlflow_password = load_or_create(cluster.paths.state)["mlflow_admin_password"]
            # mlflow_url_inside stays unset: the Ray pods carry MLFLOW_TRACKING_* from the templates already
        if config.dask.enabled:
            base = bridge("dask", "app.kubernetes.io/name=dask-scheduler", DASK_DASHBOARD_PORT)
            if base:
                endpoints.dask_dashboard_url = base + "/dask"  # the scheduler runs with --dashboard-prefix /dask
                endpoints.dask_python = pod_python(api, namespace, "app.kubernetes.io/name=dask-scheduler", "dask")
        if config.ray.enabled:
            endpoints.ray_dashboard_url = bridge("ray", RAY_HEAD_SELECTOR, RAY_DASHBOARD_PORT)
            endpoints.ray_token = load_or_create(cluster.paths.state)["ray_auth_token"]
        if config.serve.enabled:
            from piml.serve.apps import HEAD_SELECTOR, SERVE_PORT

            endpoints.serve_url = bridge("serve", HEAD_SELECTOR, SERVE_PORT)
            endpoints.serve_token = load_or_create(cluster.paths.state)["serve_token"]
        if config.queue.enabled:
            try:
                tunnel = open_tunnel(path, namespace, config.queue.kind)
                closers.append(tunnel.close)
                endpoints.queue_url, endpoints.queue_password = tunnel.url, tunnel.password
            except PimlError as exc:
                endpoints.unreachable["queue"] = str(exc.problems[0])
        yield endpoints
    finally:
        for close in closers:
            close()
        api.api_client.close()


def pod_python(api: Any, namespace: str, selector: str, what: str) -> Callable[[str], str]:
    """Run a Python script in a ready pod matching `selector` (kubectl exec), return its stdout."""
    from piml.queue.tunnel import open_stream, pick_pod

    def run(script: str) -> str:
        from kubernetes.stream import stream

        pod = pick_pod(api, namespace, selector, what)
        response = open_stream(
            stream,
            api.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=["python", "-c", script],
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        try:
            response.run_forever(timeout=EXEC_TIMEOUT)
            if response.is_open():
                raise CheckFailed(
                    f"the script in pod {pod} did not finish within {EXEC_TIMEOUT} s",
                    f"kubectl -n {namespace} logs {pod}",
                )
            out, err, code = response.read_stdout(), response.read_stderr(), response.returncode
        finally:
            response.close()
        if code != 0:
            last = (err.strip().splitlines() or ["no output"])[-1][:300]
            raise CheckFailed(
                f"the script in pod {pod} exited with {code}: {last}", f"kubectl -n {namespace} logs {pod}"
            )
        return out

    return run
