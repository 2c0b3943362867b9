"""API discovery: which kinds the server serves, and where (apiVersion + kind -> plural, namespaced).

Answers are cached per group/version; `forget` drops one so a kind that a CRD has just added is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from piml.kube.client import Kube, KubeError
from piml.kube.objects import dig


@dataclass(frozen=True)
class Resource:
    api_version: str  # "v1", "apps/v1", "ray.io/v1"
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path: the collection (all namespaces when `namespace` is None), or one object."""
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


class Discovery:
    def __init__(self, kube: Kube):
        self.kube = kube
        self._cache: dict[str, dict[str, Resource]] = {}  # groupVersion -> kind -> Resource

    def _load(self, api_version: str) -> dict[str, Resource]:
        if api_version not in self._cache:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                listing = self.kube.request("GET", path)
            except KubeError as exc:
                if exc.status not in (404, 503):  # 503: an aggregated API not up yet
                    raise
                listing = {"resources": []}
            self._cache[api_version] = {
                r["kind"]: Resource(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
                for r in dig(listing, "resources", default=[])
                if "/" not in r["name"]
            }
        return self._cache[api_version]

    def resource(self, api_version: str, kind: str) -> Resource | None:
        """Where `kind` lives, or None when the server does not serve it (yet)."""
        return self._load(api_version).get(kind)

    def served(self, api_version: str, kind: str) -> bool:
        return self.resource(api_version, kind) is not None

    def forget(self, api_version: str) -> None:
        self._cache.pop(api_version, None)
