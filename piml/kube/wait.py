"""Bounded waits: kinds served once their CRDs are Established, and Deployments / RayClusters ready.

Every wait has its own timeout and also stops at the run's total deadline; polling, never watching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from piml.errors import Problem
from piml.kube.client import Kube
from piml.kube.discovery import Discovery
from piml.kube.objects import CHART_FOR_GROUP, Ref, dig

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@dataclass(frozen=True)
class Timeouts:
    """Seconds. The defaults fit a Pi cluster pulling images over a home line; tests use small ones."""

    crds: float = 300.0  # a HelmChart applied -> its CRDs Established and served
    ready: float = 600.0  # everything applied -> Deployments available, RayCluster ready
    total: float = 1200.0  # the whole platform stage
    poll: float = 2.0
    request: float = 15.0  # one API call


class Deadline:
    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.end = self.start + seconds

    def within(self, seconds: float) -> float:
        """The monotonic time a wait of `seconds` must stop at, never after the deadline."""
        return min(self.end, time.monotonic() + seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _established(crd: dict) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in dig(crd, "status", "conditions", default=[])
    )


def wait_for_kinds(
    kube: Kube, discovery: Discovery, kinds: set[tuple[str, str]], until: float, poll: float, charts: set[str]
) -> list[Problem]:
    """Wait until every (apiVersion, kind) is served: its CRD (found by group and kind) Established and the
    group/version in discovery. `charts` are the HelmCharts just applied: only kinds one of them brings are
    waited for; any other kind that is not served is a problem at once."""
    problems = []
    pending = set()
    for api_version, kind in sorted(kinds):
        group = api_version.partition("/")[0]
        chart = CHART_FOR_GROUP.get(group)
        if chart in charts:
            pending.add((api_version, kind))
        elif group == "traefik.io":
            problems.append(
                Problem(
                    f"{kind} ({api_version})",
                    "this cluster does not serve Traefik's kinds",
                    "k3s ships Traefik: remove 'traefik' from k3s.disable in piml.yaml and run piml up again",
                )
            )
        else:
            problems.append(
                Problem(
                    f"{kind} ({api_version})",
                    "this cluster does not serve this kind and nothing piml applies brings it",
                    "install the operator that provides it",
                )
            )
    state: dict[tuple[str, str], str] = {k: "no CRD yet" for k in pending}
    while pending:
        crds = dig(kube.request("GET", CRD_PATH), "items", default=[])
        for api_version, kind in sorted(pending):
            group = api_version.partition("/")[0]
            crd = next(
                (c for c in crds if dig(c, "spec", "group") == group and dig(c, "spec", "names", "kind") == kind), None
            )
            if crd is None:
                continue
            if not _established(crd):
                state[(api_version, kind)] = f"CRD {crd['metadata']['name']} not Established"
                continue
            discovery.forget(api_version)
            if discovery.served(api_version, kind):
                pending.discard((api_version, kind))
            else:
                state[(api_version, kind)] = f"CRD {crd['metadata']['name']} Established, {api_version} not served yet"
        remaining = until - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(poll, remaining))
    for api_version, kind in sorted(pending):
        chart = CHART_FOR_GROUP[api_version.partition("/")[0]]
        problems.append(
            Problem(
                f"HelmChart kube-system/{chart}",
                f"{kind} ({api_version}) is still not served ({state[(api_version, kind)]})",
                f"see how the chart install went: `kubectl -n kube-system logs job/helm-install-{chart}` "
                "(k3s fetches the chart from its repository on the internet)",
            )
        )
    return problems


def readiness(obj: dict) -> tuple[bool, str]:
    """Whether a live object is ready, and a few words on how far it is."""
    status = obj.get("status") or {}
    kind = obj["kind"]
    if kind == "Deployment":
        want = dig(obj, "spec", "replicas", default=1)
        current = dig(status, "observedGeneration", default=0) >= dig(obj, "metadata", "generation", default=0)
        available = dig(status, "availableReplicas", default=0)
        ok = current and dig(status, "updatedReplicas", default=0) >= want and available >= want
        return ok, f"{available}/{want} available"
    if kind == "RayCluster":
        state = status.get("state") or "pending"
        return state == "ready", f"state {state}"
    if kind == "RayService":  # ready when every route's Serve application runs (KubeRay reads it off Ray Serve)
        rows = route_rows(obj)
        return all(row["ready"] for row in rows), "; ".join(f"{row['component']}: {row['state']}" for row in rows)
    return True, "applied"


# Ray Serve's deployment states that mean replicas are not serving (Ray 2.60 serve/_private/common.py; KubeRay
# copies them as they are, UPSCALING and DOWNSCALING included)
DEPLOYMENT_FAILED = ("UNHEALTHY", "DEPLOY_FAILED")


def route_rows(obj: dict) -> list[dict]:
    """One row per serving route, from what KubeRay reads off Ray Serve (status.activeServiceStatus): the
    application's state and its replicas' (HEALTHY, UPSCALING, ...). Before the first application runs, one row
    for the service with the Ready condition's reason (Initializing, ...)."""
    meta, status = obj["metadata"], obj.get("status") or {}
    base = {"kind": "RayService", "namespace": meta.get("namespace"), "name": meta["name"]}
    conditions = {c.get("type"): c for c in dig(status, "conditions", default=[])}
    ready = conditions.get("Ready", {})
    apps = dig(status, "activeServiceStatus", "applicationStatuses", default={})
    if not apps:
        return [{**base, "component": "serve", "ready": False, "state": ready.get("reason") or "pending"}]
    rows = []
    for route, app in sorted(apps.items()):
        replicas = dig(app, "serveDeploymentStatuses", "model", "status", default="")
        ok = app.get("status") == "RUNNING" and replicas not in DEPLOYMENT_FAILED and ready.get("status") == "True"
        state = (app.get("status") or "pending") + (f", replicas {replicas}" if replicas else "")
        message = app.get("message") or dig(app, "serveDeploymentStatuses", "model", "message", default="")
        if not ok and message:
            state += f": {message.strip().splitlines()[-1][:200]}"
        rows.append({**base, "component": f"serve/{route}", "ready": ok, "state": state})
    return rows


WAITED_KINDS = {"Deployment", "RayCluster", "RayService"}


def wait_ready(
    kube: Kube, discovery: Discovery, refs: list[Ref], until: float, poll: float, progress=None
) -> tuple[list[Ref], dict[Ref, dict]]:
    """Poll until every object is ready or `until`. Returns (ready refs, not ready: ref -> its last live object)."""
    waiting = [r for r in refs if r.kind in WAITED_KINDS]
    ready: list[Ref] = [r for r in refs if r.kind not in WAITED_KINDS]
    last: dict[Ref, dict] = {}
    while waiting:
        for r in list(waiting):
            resource = discovery.resource(r.api_version, r.kind)
            obj = kube.get(resource.path(r.namespace or None, r.name)) if resource else None
            if obj is None:
                continue
            ok, _ = readiness(obj)
            last[r] = obj
            if ok:
                waiting.remove(r)
                ready.append(r)
                last.pop(r, None)
                if progress:
                    progress(f"ready    {r}")
        remaining = until - time.monotonic()
        if not waiting or remaining <= 0:
            break
        time.sleep(min(poll, remaining))
    return ready, {
        r: last.get(r, {"kind": r.kind, "metadata": {"name": r.name, "namespace": r.namespace}}) for r in waiting
    }
