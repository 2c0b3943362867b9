"""Server-side apply of one object (field manager `piml`), saying whether it was created, changed or unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from piml.errors import EXIT_FAILED, PimlError, Problem
from piml.kube.client import Kube, KubeError
from piml.kube.discovery import Discovery
from piml.kube.objects import FIELD_MANAGER, Ref, ref

SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


@dataclass(frozen=True)
class Applied:
    ref: Ref
    action: str  # "created" | "changed" | "unchanged"


def _content(obj: dict) -> dict:
    """What piml can change: everything but status and what the server keeps in metadata."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_METADATA}
    return {**{k: v for k, v in obj.items() if k not in ("metadata", "status")}, "metadata": meta}


def apply_object(kube: Kube, discovery: Discovery, obj: dict) -> Applied:
    """Apply `obj`. Its kind must be served (see wait.wait_for_kinds)."""
    target = ref(obj)
    resource = discovery.resource(target.api_version, target.kind)
    if resource is None:
        raise PimlError(Problem(str(target), f"the cluster does not serve {target.kind} ({target.api_version})",
                                "check the operator that brings it is installed"), EXIT_FAILED)
    path = resource.path(target.namespace or None, target.name)
    before = kube.get(path)
    try:
        after = kube.request("PATCH", path, {"fieldManager": FIELD_MANAGER, "force": "true"}, obj,
                             content_type="application/apply-patch+yaml")
    except KubeError as exc:
        # The API's message names fields, never values; still, keep it to its first line.
        raise PimlError(Problem(str(target), f"the cluster refused it ({exc.status} {exc.reason}): "
                                f"{exc.message.splitlines()[0] if exc.message else 'no message'}",
                                "this is a bug in piml's manifests or a cluster too old for them: please report it"),
                        EXIT_FAILED) from None
    if before is None:
        action = "created"
    elif _content(before) != _content(after) or before["metadata"].get("generation") != after["metadata"].get("generation"):
        action = "changed"
    else:
        action = "unchanged"
    return Applied(target, action)
