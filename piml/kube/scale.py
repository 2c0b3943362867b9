"""Stopping a Deployment's pods and starting them again, for work on its volume while nothing has it open."""

from __future__ import annotations

import time

from piml.errors import EXIT_FAILED, PimlError, Problem
from piml.kube.client import Kube, KubeError
from piml.kube.objects import dig
from piml.kube.wait import readiness


def _path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def _live(kube: Kube, namespace: str, name: str) -> dict:
    found = kube.get(_path(namespace, name))
    if found is None:
        raise PimlError(
            Problem(f"{namespace}/{name}", "no such Deployment in the cluster", "run `piml up` first"), EXIT_FAILED
        )
    return found


def scale(kube: Kube, namespace: str, name: str, replicas: int) -> int:
    """Set the Deployment's replicas; returns what they were. A merge patch, not an apply: piml's next apply
    takes replicas back as rendered, which is what a user expects after a restore."""
    live = _live(kube, namespace, name)
    before = int(dig(live, "spec", "replicas", default=1))
    if before != replicas:
        try:
            kube.request(
                "PATCH", _path(namespace, name), body={"spec": {"replicas": replicas}},
                content_type="application/merge-patch+json",
            )  # fmt: skip
        except KubeError as exc:
            raise PimlError(
                Problem(f"{namespace}/{name}", f"cannot scale it to {replicas}: {exc}", "see `piml status`"),
                EXIT_FAILED,
            ) from None
    return before


def wait_stopped(kube: Kube, namespace: str, name: str, until: float, poll: float = 1.0) -> list[str]:
    """Poll until no pod of the Deployment is left (they hold its volume), or `until`; returns those left."""
    live = _live(kube, namespace, name)
    selector = ",".join(f"{k}={v}" for k, v in dig(live, "spec", "selector", "matchLabels", default={}).items())
    while True:
        pods = dig(
            kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector}),
            "items", default=[],
        )  # fmt: skip
        left = [dig(p, "metadata", "name") for p in pods]
        remaining = until - time.monotonic()
        if not left or remaining <= 0:
            return left
        time.sleep(min(poll, remaining))


def wait_available(kube: Kube, namespace: str, name: str, until: float, poll: float = 2.0) -> tuple[bool, str]:
    """Poll until the Deployment is available at its replicas, or `until`; (ready, how far it is)."""
    while True:
        ok, how = readiness(_live(kube, namespace, name))
        remaining = until - time.monotonic()
        if ok or remaining <= 0:
            return ok, how
        time.sleep(min(poll, remaining))
