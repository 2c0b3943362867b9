"""`piml teardown` (without --k3s): delete the project's platform from the cluster.

Custom resources go first and are waited for (their operators remove finalizers), then the rest in
reverse apply order, then the HelmCharts (k3s's Helm controller uninstalls the charts when they go).
PersistentVolumeClaims, and the namespace holding them, are kept unless `purge`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piml.kube.client import connect
from piml.kube.discovery import Discovery
from piml.kube.objects import Ref
from piml.kube.prune import (
    HELM_CHART_DEPENDENTS,
    PODS,
    delete_objects,
    is_custom,
    project_objects,
    wait_dependents_gone,
    wait_gone,
    why_still_there,
)

if TYPE_CHECKING:
    from piml.project import Cluster


@dataclass
class TeardownReport:
    deleted: list[Ref] = field(default_factory=list)
    kept: list[Ref] = field(default_factory=list)
    still_going: list[Ref] = field(default_factory=list)  # deletion asked, not finished in time (finalizers)
    pods_left: list[str] = field(default_factory=list)  # the custom resources' pods, not gone in time
    waiting_for: dict[str, str] = field(default_factory=dict)  # object -> what it waits for, for each of those
    purge: bool = False

    def as_dict(self) -> dict:
        return {
            "purge": self.purge,
            "deleted": [r.as_dict() for r in self.deleted],
            "kept": [r.as_dict() for r in self.kept],
            "still_deleting": [r.as_dict() for r in self.still_going],
            "pods_left": self.pods_left,
            "waiting_for": self.waiting_for,
        }


def teardown_platform(
    cluster: Cluster,
    kubeconfig: Path,
    purge: bool = False,
    timeout: float = 120.0,
    poll: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> TeardownReport:
    """Delete the platform. `purge` also deletes the PersistentVolumeClaims (the data) and the namespace:
    the caller confirms that first (the project name typed, or --yes)."""
    kube = connect(kubeconfig, cluster.paths.show(kubeconfig))
    try:
        return _teardown(kube, cluster.name, purge, timeout, poll, progress)
    finally:
        kube.close()


def _teardown(kube, project: str, purge: bool, timeout: float, poll: float, progress) -> TeardownReport:
    discovery = Discovery(kube)
    report = TeardownReport(purge=purge)
    until = time.monotonic() + timeout
    live = project_objects(kube, discovery, project)
    charts = [o for o in live if o["kind"] == "HelmChart"]
    # the operators' resources (the charts' operators, Traefik's): deleted first, while their operators run
    custom = [o for o in live if is_custom(o["apiVersion"]) and o not in charts]
    others = [o for o in live if o not in custom and o not in charts]
    last = []
    for batch in (custom, others, charts):
        result = delete_objects(kube, discovery, batch, purge, progress)
        report.deleted += result.deleted
        report.kept += result.kept
        if batch is custom:  # the operators must still run to finish these, and their pods go after them
            report.still_going += wait_gone(kube, discovery, result.going, until, poll)
            report.pods_left = [p.removeprefix("Pod ") for p in wait_dependents_gone(kube, custom, PODS, until, poll)]
        else:
            last += result.going
    # Deleted in the foreground, so a Deployment goes after its pods; k3s uninstalls a chart before its HelmChart
    # goes; a namespace empties before it goes. Wait for all of it, bounded.
    report.still_going += wait_gone(kube, discovery, last, until, poll)
    report.waiting_for = {str(r): why_still_there(kube, discovery, r) for r in report.still_going}
    report.waiting_for.update({f"Pod {pod}": "still there" for pod in report.pods_left})
    # ... and for what k3s's Helm controller made for the charts, so that an `up` right after starts clean
    if charts and not report.still_going:
        for left in wait_dependents_gone(kube, charts, HELM_CHART_DEPENDENTS, until, poll):
            report.waiting_for[left] = "left by k3s's Helm controller; the garbage collector removes it"
    return report
