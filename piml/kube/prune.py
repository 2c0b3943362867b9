"""The project's objects in the cluster, and deleting them: prune (what no longer renders) and teardown.

Objects are found by piml's labels across every kind piml manages. Objects another controller owns
(ownerReferences) are left to garbage collection. PersistentVolumeClaims are kept unless purging, and so is
a Namespace that still holds one. Deleting takes time on a real cluster: finalizers (k3s runs `helm delete` before
a HelmChart goes, KubeRay cleans Redis before a fault-tolerant RayCluster goes) and Terminating namespaces; an
object already being deleted is not deleted again, and `wait_gone` waits, bounded, until they are gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from piml.kube.client import Kube, KubeError
from piml.kube.discovery import Discovery
from piml.kube.objects import KNOWN_KINDS, Ref, dig, kind_rank, project_selector, ref


def is_custom(api_version: str) -> bool:
    """A custom resource's API group has a dot and is not Kubernetes' own (`apps`, `networking.k8s.io` are)."""
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


@dataclass
class Deletion:
    deleted: list[Ref] = field(default_factory=list)
    kept: list[Ref] = field(default_factory=list)  # PVCs (data) and the namespaces that hold them
    terminating: list[Ref] = field(default_factory=list)  # already being deleted (an earlier run asked)

    @property
    def going(self) -> list[Ref]:
        """What is on its way out: to wait for."""
        return self.deleted + self.terminating


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
    """Delete one object. Built-in kinds go in the foreground: the object stays, being deleted, until its
    ReplicaSets and pods are gone, so waiting for it waits for them. Custom resources go in the background: their
    controller may still need what they own while its finalizer runs, and a foreground deletion has the garbage
    collector remove that first (KubeRay's Redis cleanup Job runs as the RayCluster's ServiceAccount, k3s's Helm
    uninstall Job as the HelmChart's: either Job could never start). False when it was already gone."""
    resource = discovery.resource(target.api_version, target.kind)
    if resource is None:
        return False
    try:
        kube.request(
            "DELETE",
            resource.path(target.namespace or None, target.name),
            {"propagationPolicy": "Background" if is_custom(target.api_version) else "Foreground"},
        )
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def delete_objects(kube: Kube, discovery: Discovery, live: list[dict], purge: bool, progress=None) -> Deletion:
    """Delete `live` objects in reverse apply order, keeping PVCs (and their namespaces) unless `purge`."""
    result = Deletion()
    refs = sorted((ref(o) for o in live), key=lambda r: (kind_rank(r.api_version, r.kind), r), reverse=True)
    being_deleted = {ref(o) for o in live if dig(o, "metadata", "deletionTimestamp")}
    kept_namespaces = set()
    for target in refs:
        if target in being_deleted:
            result.terminating.append(target)
            continue
        if target.kind == "PersistentVolumeClaim" and not purge:
            result.kept.append(target)
            kept_namespaces.add(target.namespace)
            continue
        if (
            target.kind == "Namespace"
            and not purge
            and (target.name in kept_namespaces or _holds_claims(kube, target.name))
        ):
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


# k3s's Helm controller up to v0.17.3 (embedded by k3s v1.36.0 to v1.36.2) retries a HelmChart's removal with a
# growing delay (lasso's workqueue: up to 30 s, then 2 min after 30 failures), and the success of its uninstall
# Job queues the chart only behind that delay; a change to the HelmChart itself is queued at once. A chart deleted
# moments after it was made, on a busy board, otherwise stays minutes after its uninstall is done. v0.17.4 and
# later (k3s v1.36.3) wait without an error, so no delay builds up; a nudge costs them one more pass.
HELM_CHART_FINALIZER = "wrangler.cattle.io/on-helm-chart-remove"
NUDGE_EVERY = 10.0  # seconds between two nudges of one HelmChart


def wait_gone(kube: Kube, discovery: Discovery, refs: list[Ref], until: float, poll: float) -> list[Ref]:
    """Poll until every object is gone or `until` (monotonic); returns those still there."""
    pending = list(refs)
    nudged: dict[Ref, float] = {}
    while pending:
        for target in list(pending):
            resource = discovery.resource(target.api_version, target.kind)
            path = resource.path(target.namespace or None, target.name) if resource else ""
            live = kube.get(path) if resource else None
            if live is None:
                pending.remove(target)
            elif HELM_CHART_FINALIZER in dig(live, "metadata", "finalizers", default=[]):
                if time.monotonic() - nudged.get(target, -NUDGE_EVERY) >= NUDGE_EVERY:
                    _nudge(kube, path)
                    nudged[target] = time.monotonic()
        remaining = until - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(poll, remaining))
    return pending


def _nudge(kube: Kube, path: str) -> None:
    """Queue a HelmChart being deleted for k3s's Helm controller now: an annotation that says when piml asked."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"metadata": {"annotations": {"piml.io/removal-nudged-at": stamp}}}
    try:
        kube.request("PATCH", path, body=body, content_type="application/merge-patch+json")
    except KubeError as e:
        if e.status != 404:  # gone meanwhile: nothing to nudge
            raise


# What k3s's Helm controller makes for a HelmChart, owned by it: the chart's ServiceAccount, its
# ClusterRoleBinding, the values and content (Secret, ConfigMaps) and the helm-install/-delete Job. Its uninstall
# handler can run twice for one removal (seen with the real controller: two "Uninstalled" events, two
# helm-delete pods), and the second run makes them again after the first removed them; the garbage collector
# deletes those once the HelmChart is gone. A HelmChart of the same name applied before that (`up` right after
# teardown) takes them over and then loses them: its uninstall Job waits for a ServiceAccount that is no more.
HELM_CHART_DEPENDENTS = (
    ("/api/v1/namespaces/{ns}/serviceaccounts", "ServiceAccount"),
    ("/api/v1/namespaces/{ns}/configmaps", "ConfigMap"),
    ("/api/v1/namespaces/{ns}/secrets", "Secret"),
    ("/apis/batch/v1/namespaces/{ns}/jobs", "Job"),
    ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding"),
)
PODS = (("/api/v1/namespaces/{ns}/pods", "Pod"),)


def wait_dependents_gone(
    kube: Kube, owners: list[dict], kinds: tuple[tuple[str, str], ...], until: float, poll: float
) -> list[str]:
    """Poll until none of `kinds` (list path, kind) that `owners` (live objects, deleted) made is left, or `until`
    (monotonic); returns those left ("Kind namespace/name"). Their garbage collection starts once the owner is
    gone. Only metadata is asked for: Secrets' data never reaches piml."""
    uids = {dig(o, "metadata", "uid") for o in owners}
    namespaces = sorted({dig(o, "metadata", "namespace") for o in owners} - {None})
    paths = sorted({(path.format(ns=ns), kind) for path, kind in kinds for ns in namespaces})
    left: list[str] = []
    while paths:
        left = [
            f"{kind} {'/'.join(filter(None, (dig(item, 'metadata', 'namespace'), item['metadata']['name'])))}"
            for path, kind in paths
            for item in dig(kube.request("GET", path, metadata_only=True), "items", default=[])
            if any(r.get("uid") in uids for r in dig(item, "metadata", "ownerReferences", default=[]))
        ]
        remaining = until - time.monotonic()
        if not left or remaining <= 0:
            break
        time.sleep(min(poll, remaining))
    return left


def why_still_there(kube: Kube, discovery: Discovery, target: Ref) -> str:
    """A few words on what an object being deleted waits for: its finalizers, or a namespace's contents."""
    resource = discovery.resource(target.api_version, target.kind)
    live = kube.get(resource.path(target.namespace or None, target.name)) if resource else None
    if live is None:
        return "gone now"
    finalizers = dig(live, "metadata", "finalizers", default=[])
    if target.kind == "Namespace":
        waiting = [
            c.get("message", "")
            for c in dig(live, "status", "conditions", default=[])
            if c.get("status") == "True"
            and c.get("type") in ("NamespaceContentRemaining", "NamespaceFinalizersRemaining")
        ]
        return "; ".join(m for m in waiting if m) or "Terminating"
    return f"waiting for {', '.join(finalizers)}" if finalizers else "Terminating"
