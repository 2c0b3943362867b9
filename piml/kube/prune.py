"""The project's objects in the cluster, and deleting them: prune (what no longer renders) and teardown.

Objects are found by piml's labels across every kind piml manages. Objects another controller owns
(ownerReferences) are left to garbage collection. PersistentVolumeClaims are kept unless purging, and so is
a Namespace that still holds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from piml.kube.client import Kube, KubeError
from piml.kube.discovery import Discovery
from piml.kube.objects import KNOWN_KINDS, Ref, dig, kind_rank, project_selector, ref


@dataclass
class Deletion:
    deleted: list[Ref] = field(default_factory=list)
    kept: list[Ref] = field(default_factory=list)  # PVCs (data) and the namespaces that hold them


def project_objects(kube: Kube, discovery: Discovery, project: str) -> list[dict]:
    """Every live object labelled as this project's, of the kinds piml manages, in apply order."""
    found = []
    for api_version, kind in KNOWN_KINDS:
        resource = discovery.resource(api_version, kind)
        if resource is None:
            continue
        listing = kube.request("GET", resource.path(), {"labelSelector": project_selector(project)})
        for obj in dig(listing, "items", default=[]):
            if obj["metadata"].get("ownerReferences"):
                continue
            obj.setdefault("apiVersion", api_version)
            obj.setdefault("kind", kind)
            found.append(obj)
    return found


def delete(kube: Kube, discovery: Discovery, target: Ref) -> bool:
    """Delete one object (dependents in the background). False when it was already gone."""
    resource = discovery.resource(target.api_version, target.kind)
    if resource is None:
        return False
    try:
        kube.request("DELETE", resource.path(target.namespace or None, target.name), {"propagationPolicy": "Background"})
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def delete_objects(kube: Kube, discovery: Discovery, live: list[dict], purge: bool, progress=None) -> Deletion:
    """Delete `live` objects in reverse apply order, keeping PVCs (and their namespaces) unless `purge`."""
    result = Deletion()
    refs = sorted((ref(o) for o in live), key=lambda r: (kind_rank(r.api_version, r.kind), r), reverse=True)
    kept_namespaces = set()
    for target in refs:
        if target.kind == "PersistentVolumeClaim" and not purge:
            result.kept.append(target)
            kept_namespaces.add(target.namespace)
            continue
        if target.kind == "Namespace" and not purge and (target.name in kept_namespaces or _holds_claims(kube, target.name)):
            result.kept.append(target)
            continue
        if delete(kube, discovery, target):
            result.deleted.append(target)
            if progress:
                progress(f"deleted  {target}")
    return result


def _holds_claims(kube: Kube, namespace: str) -> bool:
    listing = kube.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims")
    return bool(listing.get("items"))


def prune(kube: Kube, discovery: Discovery, project: str, rendered: set[Ref], progress=None) -> Deletion:
    """Delete what piml applied before but no longer renders (a component switched off). PVCs stay."""
    stale = [o for o in project_objects(kube, discovery, project) if ref(o) not in rendered]
    return delete_objects(kube, discovery, stale, purge=False, progress=progress)
