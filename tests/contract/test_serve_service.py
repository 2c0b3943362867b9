"""The serving routes on the LAN: the Ingress's /serve path must name the Service KubeRay makes for a RayService
(BuildServeServiceForRayService, run from the operator's Go module) and a port it has, and that Service must select
the serving pods KubeRay builds from piml's RayService. Nothing else checks the name: KubeRay makes the Service
only once the Serve applications run, which needs a real Ray cluster."""

from __future__ import annotations

import pytest

from piml.serve import apps
from tests.contract.kuberay import operator_objects
from tests.contract.platform import render

pytestmark = pytest.mark.contract

SERVING = {
    "serve": {"enabled": True, "routes": {"iris": {"model": "models:/iris@champion", "max_replicas": 2}}},
}


@pytest.mark.parametrize("scenario", ["pi5-3x8gb", "amd64-server-arm64-agents"])
def test_the_ingress_reaches_kuberays_serve_service(tmp_path, scenario):
    _, objects, _ = render(scenario, SERVING, tmp_path / "project")
    (service,) = [o for o in objects if o["kind"] == "RayService"]
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    built = operator_objects(service)
    serve = built["serveService"]
    paths = {p["path"]: p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths["/serve"]["name"] == serve["metadata"]["name"] == apps.SERVICE
    assert paths["/serve"]["port"]["number"] in {p["port"] for p in serve["spec"]["ports"]}
    assert serve["metadata"]["namespace"] == ingress["metadata"]["namespace"]
    # it selects the serving pods the operator builds (once each one's proxy is healthy KubeRay adds ray.io/serve)
    selector = {k: v for k, v in serve["spec"]["selector"].items() if k != "ray.io/serve"}
    assert serve["spec"]["selector"].get("ray.io/serve") == "true"
    for pod in (built["head"], *built["workers"].values()):
        labels = pod["metadata"]["labels"]
        assert selector.items() <= labels.items(), (selector, labels)
        ports = {p.get("name"): p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert ports.get("serve") == apps.SERVE_PORT, ports
