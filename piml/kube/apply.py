"""Server-side apply of one object (field manager `piml`), saying whether it was created, changed or unchanged.

Every apply asks for `fieldValidation=Strict`: a field the server does not know is an error, never dropped in
silence. On Kubernetes v1.36 (k3s v1.36.3) a server-side apply with such a field is refused before strict
validation even runs, with a 500 "failed to create typed patch object (...): .PATH: field not declared in
schema", for built-in kinds and for CRDs with structural schemas alike (kubernetes/kubernetes#122480); a server
that validates strictly answers 400 'strict decoding error: unknown field "PATH"'. Both become one plain line
naming the object and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from piml.errors import EXIT_FAILED, PimlError, Problem
from piml.kube.client import Kube, KubeError, KubeRefused
from piml.kube.discovery import Discovery
from piml.kube.objects import FIELD_MANAGER, Ref, dig, ref

# "failed to create typed patch object (piml/mlflow; apps/v1, Kind=Deployment): .spec.x: field not declared in schema"
TYPED_PATCH = re.compile(r"failed to create typed patch object \([^)]*\): \.?(?P<path>[^:\s]+): (?P<why>.+)")
# 'RayCluster in version "v1" cannot be handled as a RayCluster: strict decoding error: unknown field "spec.x", ...'
UNKNOWN_FIELD = re.compile(r'unknown field "(?P<path>[^"]+)"')
# 'Deployment.apps "x" is invalid: spec.selector: Invalid value: ...: field is immutable'
IMMUTABLE = re.compile(r"(?P<path>[\w.\[\]-]+): Invalid value: .*field is immutable")
CLAIM_SETTINGS = {"mlflow-data": "mlflow.storage", "mlflow-minio-data": "mlflow.storage"}  # what sizes a claim
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
        raise PimlError(
            Problem(
                str(target),
                f"the cluster does not serve {target.kind} ({target.api_version})",
                "check the operator that brings it is installed",
            ),
            EXIT_FAILED,
        )
    path = resource.path(target.namespace or None, target.name)
    before = kube.get(path)
    try:
        after = kube.request(
            "PATCH",
            path,
            {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"},
            obj,
            content_type="application/apply-patch+yaml",
        )
    except KubeRefused as exc:
        if exc.status != 403 or exc.terminating:  # credentials, or a namespace going: as the client says it
            raise
        raise PimlError(forbidden(exc.message, target, before), EXIT_FAILED) from None
    except KubeError as exc:
        immutable = IMMUTABLE.search(exc.message or "")
        if exc.status == 422 and immutable:
            raise PimlError(
                Problem(
                    str(target),
                    f"the cluster refused it: {immutable['path']} cannot change once {target.kind} exists "
                    "(the API server keeps it immutable), and this piml renders it differently",
                    f"delete it and run piml up again, which makes it anew: kubectl{_ns(target)} delete "
                    f"{target.kind.lower()} {target.name}",
                ),
                EXIT_FAILED,
            ) from None
        raise PimlError(
            Problem(
                str(target),
                refusal(exc, target),
                "this is a bug in piml's manifests or a cluster too old for them: please report it",
            ),
            EXIT_FAILED,
        ) from None
    if before is None:
        action = "created"
    elif _content(before) != _content(after) or before["metadata"].get("generation") != after["metadata"].get(
        "generation"
    ):
        action = "changed"
    else:
        action = "unchanged"
    return Applied(target, action)


def _ns(target: Ref) -> str:
    return f" -n {target.namespace}" if target.namespace else ""


def forbidden(message: str, target: Ref, live: dict | None) -> Problem:
    """A 403 on an apply: admission said no to this change (the credentials were good: the request got there)."""
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    if target.kind == "PersistentVolumeClaim" and "can be resized" in first:
        size = dig(live, "spec", "resources", "requests", "storage") or "its size"
        setting = f" ({CLAIM_SETTINGS[target.name]})" if target.name in CLAIM_SETTINGS else ""
        return Problem(
            str(target),
            f"its size cannot change from {size}: k3s's local-path storage does not resize volumes",
            f"set the size back to {size} in piml.yaml{setting}; for a bigger volume, back up its data, "
            f"delete the claim (kubectl{_ns(target)} delete pvc {target.name}: its data is lost) "
            "and run piml up again",
        )
    return Problem(
        str(target),
        f"the cluster refused it (403): {first}",
        "piml needs the cluster-admin kubeconfig k3s writes (piml up --only kubeconfig); if it has it, "
        "an admission policy of the cluster refuses this object",
    )


def refusal(exc: KubeError, target: Ref) -> str:
    """Why the server refused an apply, in one line: the unknown or mistyped field when it names one.

    The API's messages name fields, never values (a Secret's data is not echoed back); still, only their first
    line is kept.
    """
    message = exc.message.strip().splitlines()[0] if exc.message and exc.message.strip() else ""
    schema = f"the schema of {target.kind} ({target.api_version})"
    typed = TYPED_PATCH.search(message)
    if typed:
        path, why = typed["path"], typed["why"].strip()
        if why == "field not declared in schema":
            return f"the cluster refused it: unknown field {path} (not in {schema})"
        return f"the cluster refused it: field {path}: {why}"
    unknown = [m["path"] for m in UNKNOWN_FIELD.finditer(message)]
    if unknown:
        fields = ", ".join(unknown)
        return f"the cluster refused it: unknown field{'s' if len(unknown) > 1 else ''} {fields} (not in {schema})"
    return f"the cluster refused it ({exc.status} {exc.reason}): {message or 'no message'}"
