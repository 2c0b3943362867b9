"""Which node each PersistentVolumeClaim's volume lives on (for volumes tied to one node, as local-path's are)."""

from __future__ import annotations

from piml.kube.client import Kube
from piml.kube.objects import dig

HOSTNAME = "kubernetes.io/hostname"
SELECTED_NODE = "volume.kubernetes.io/selected-node"  # set on a claim by the scheduler, before the volume exists


def volume_node(pv: dict) -> str | None:
    """The one node a PersistentVolume's required nodeAffinity allows, or None (a network volume, several nodes)."""
    terms = dig(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms", default=[])
    nodes = set()
    for term in terms:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == HOSTNAME and expression.get("operator") == "In":
                nodes.update(expression.get("values") or [])
    return next(iter(nodes)) if len(nodes) == 1 else None


def claim_nodes(kube: Kube, namespace: str) -> dict[str, str]:
    """{claim name: node} for the claims in `namespace` whose volume is tied to one node.

    Two bounded list requests: the namespace's claims, then the PersistentVolumes (cluster-wide), matched by the
    volume's claimRef (and uid, so a volume left from a deleted claim of the same name does not count). A claim
    whose volume is still being made counts with the node the scheduler chose for it."""
    claims = dig(kube.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"), "items", default=[])
    if not claims:
        return {}
    volumes = dig(kube.request("GET", "/api/v1/persistentvolumes"), "items", default=[])
    found: dict[str, str] = {}
    for claim in claims:
        meta = claim.get("metadata") or {}
        name, uid = meta.get("name"), meta.get("uid")
        bound = [pv for pv in volumes if _claims(pv, namespace, name, uid)]
        if bound:
            node = volume_node(bound[0])
        else:
            node = (meta.get("annotations") or {}).get(SELECTED_NODE)
        if node:
            found[name] = node
    return found


def _claims(pv: dict, namespace: str, name: str, uid: str | None) -> bool:
    ref = dig(pv, "spec", "claimRef", default={})
    if ref.get("namespace") != namespace or ref.get("name") != name:
        return False
    return not (uid and ref.get("uid") and ref["uid"] != uid)


def claim_volume(kube: Kube, namespace: str, claim: str) -> tuple[str, str] | None:
    """(node, directory on that node) of a bound claim whose volume is a directory on one node (local-path's
    hostPath or a `local` volume), or None: not bound, or not that kind of volume."""
    found = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
    volume_name = dig(found or {}, "spec", "volumeName")
    pv = kube.get(f"/api/v1/persistentvolumes/{volume_name}") if volume_name else None
    if not pv or not _claims(pv, namespace, claim, dig(found, "metadata", "uid")):
        return None
    node = volume_node(pv)
    path = dig(pv, "spec", "hostPath", "path") or dig(pv, "spec", "local", "path")
    return (node, path) if node and path else None
