"""Naming rendered and live objects, and the kinds piml manages (in apply order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROJECT_LABEL = "piml.io/project"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
FIELD_MANAGER = "piml"

# Every kind piml renders or may have rendered before, in apply order. Prune and teardown look for the
# project's objects among these (a component switched off no longer renders its kinds); deletion runs backwards.
KNOWN_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "Namespace"),
    ("helm.cattle.io/v1", "HelmChart"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "CronJob"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
    ("ray.io/v1", "RayService"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "ScaledJob"),
    ("traefik.io/v1alpha1", "Middleware"),
    ("networking.k8s.io/v1", "Ingress"),
)
# The API groups whose CRDs arrive with a chart piml applies as a HelmChart (the chart's name).
CHART_FOR_GROUP = {"ray.io": "kuberay-operator", "keda.sh": "keda"}


@dataclass(frozen=True, order=True)
class Ref:
    api_version: str
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def as_dict(self) -> dict:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace or None,
            "name": self.name,
        }


def ref(obj: dict) -> Ref:
    meta = obj.get("metadata", {})
    return Ref(obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    """The value at `path` in a live object, or `default` when any step is missing OR null: the API server is
    written in Go, which writes an empty list or map as null (a CRD just created answers `conditions: null`)."""
    for key in path:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return default
        obj = obj[key]
    return obj


def kind_rank(api_version: str, kind: str) -> int:
    """Position in apply order; unknown kinds go after the known ones."""
    try:
        return KNOWN_KINDS.index((api_version, kind))
    except ValueError:
        return len(KNOWN_KINDS)


def project_selector(project: str) -> str:
    return f"{MANAGED_LABEL}=piml,{PROJECT_LABEL}={project}"
