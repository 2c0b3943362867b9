"""Stage `platform` of `piml up`: apply the rendered platform, prune what no longer renders, wait until ready.

Order: Namespaces, HelmCharts, every object whose kind is served, then (once the charts' CRDs are
Established) the objects of the kinds they bring. Then prune, then wait with bounded timeouts; what is not
ready in time is diagnosed from pods, logs and events and reported one plain line per problem.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piml.errors import EXIT_FAILED, PimlError, Problem
from piml.kube.apply import Applied, apply_object
from piml.kube.client import connect
from piml.kube.diagnose import diagnose
from piml.kube.discovery import Discovery
from piml.kube.objects import PROJECT_LABEL, Ref, ref
from piml.kube.prune import prune, wait_gone, why_still_there
from piml.kube.wait import Deadline, Timeouts, readiness, wait_for_kinds, wait_ready

if TYPE_CHECKING:
    from piml.project import Cluster
    from piml.render.manifests import Rendered

Progress = Callable[[str], None]


@dataclass
class DeployReport:
    applied: list[Applied] = field(default_factory=list)
    pruned: list[Ref] = field(default_factory=list)
    kept: list[Ref] = field(default_factory=list)  # no longer rendered but kept: volumes and their namespace
    still_deleting: list[str] = field(default_factory=list)  # "<object>: <what it waits for>", past the bound
    ready: list[Ref] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, action: str) -> int:
        return sum(1 for a in self.applied if a.action == action)

    @property
    def created(self) -> int:
        return self.count("created")

    @property
    def changed(self) -> int:
        return self.count("changed")

    @property
    def unchanged(self) -> int:
        return self.count("unchanged")

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "created": self.created,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "pruned": [r.as_dict() for r in self.pruned],
            "kept": [r.as_dict() for r in self.kept],
            "still_deleting": self.still_deleting,
            "objects": [{**a.ref.as_dict(), "action": a.action} for a in self.applied],
            "ready": [str(r) for r in self.ready],
            "problems": [str(p) for p in self.problems],
            "seconds": round(self.seconds, 1),
        }


class DeployError(PimlError):
    """The platform did not come up; `report` says how far it got."""

    def __init__(self, problems: list[Problem], report: DeployReport):
        super().__init__(problems, EXIT_FAILED)
        self.report = report


def _check_labels(objects: list[dict], project: str) -> None:
    for obj in objects:
        if obj.get("metadata", {}).get("labels", {}).get(PROJECT_LABEL) != project:
            raise PimlError(
                Problem(
                    str(ref(obj)),
                    f"has no {PROJECT_LABEL}={project} label",
                    "this is a bug in piml's templates: please report it",
                ),
                EXIT_FAILED,
            )


def deploy(
    cluster: Cluster,
    kubeconfig: Path,
    rendered: list[Rendered],
    timeouts: Timeouts | None = None,
    progress: Progress | None = None,
    wait: bool = True,
) -> DeployReport:
    """Apply `rendered` (render_platform's output, with secrets) to the cluster in `kubeconfig`.

    Returns the report when everything is ready; raises DeployError (exit 1, report attached) otherwise.
    """
    timeouts = timeouts or Timeouts()
    deadline = Deadline(timeouts.total)
    kube = connect(kubeconfig, cluster.paths.show(kubeconfig), timeouts.request)
    try:
        return _deploy(kube, cluster.name, [o for r in rendered for o in r.objects], timeouts, deadline, progress, wait)
    finally:
        kube.close()


def _deploy(
    kube,
    project: str,
    objects: list[dict],
    timeouts: Timeouts,
    deadline: Deadline,
    progress: Progress | None,
    wait: bool,
) -> DeployReport:
    say = progress or (lambda line: None)
    report = DeployReport()
    _check_labels(objects, project)
    discovery = Discovery(kube)

    def apply_all(batch):
        for obj in batch:
            applied = apply_object(kube, discovery, obj)
            report.applied.append(applied)
            say(f"{applied.action:<9} {applied.ref}")

    def fail(problems):
        report.problems = problems
        report.seconds = deadline.elapsed()
        raise DeployError(problems, report)

    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    charts = [o for o in objects if o["kind"] == "HelmChart"]
    rest = [o for o in objects if o["kind"] not in ("Namespace", "HelmChart")]
    apply_all(namespaces)
    apply_all(charts)
    served = [o for o in rest if discovery.served(o["apiVersion"], o["kind"])]
    later = [o for o in rest if not discovery.served(o["apiVersion"], o["kind"])]
    apply_all(served)
    if later:
        kinds = {(o["apiVersion"], o["kind"]) for o in later}
        say("waiting  for " + ", ".join(sorted(k for _, k in kinds)) + " to be served (CRDs from the Helm charts)")
        problems = wait_for_kinds(
            kube,
            discovery,
            kinds,
            deadline.within(timeouts.crds),
            timeouts.poll,
            {o["metadata"]["name"] for o in charts},
        )
        if problems:
            fail(problems)
        apply_all(later)

    deletion = prune(
        kube, discovery, project, {ref(o) for o in objects}, progress=lambda line: say(line + " (no longer rendered)")
    )
    report.pruned, report.kept = deletion.deleted, deletion.kept

    def wait_pruned_gone(seconds: float):  # after the readiness wait, which gave them time too; bounded
        left = wait_gone(kube, discovery, deletion.going, deadline.within(seconds), timeouts.poll) if wait else []
        report.still_deleting = [f"{r}: {why_still_there(kube, discovery, r)}" for r in left]
        for line in report.still_deleting:
            say(f"still deleting {line}")

    if wait:
        refs = [ref(o) for o in objects]
        started = time.monotonic()
        report.ready, not_ready = wait_ready(kube, discovery, refs, deadline.within(timeouts.ready), timeouts.poll, say)
        if not_ready:
            waited = time.monotonic() - started
            problems = []
            for target, live in not_ready.items():
                problems += (
                    diagnose(kube, live, str(target), waited)
                    if live.get("metadata", {}).get("uid")
                    else [Problem(str(target), "was applied but is not in the cluster any more", "run piml up again")]
                )
            wait_pruned_gone(0)  # failing already: look once, do not wait longer
            fail(problems)
    wait_pruned_gone(timeouts.ready)
    report.seconds = deadline.elapsed()
    return report


__all__ = ["DeployError", "DeployReport", "Timeouts", "deploy", "readiness"]
