"""STAND-IN faults: what the kubelet stand-in (nodes.py) reports for a pod a test made fail.

A test writes DIR/faults.json (see `inject`): {owner: {"fault": kind, "logs": [lines]}}. A pod matches an owner
when it is the Deployment's (`<owner>-<replicaset hash>-<5 chars>`), the RayCluster's (label
`ray.io/cluster=<owner>`) or the Job's (label `batch.kubernetes.io/job-name=<owner>`: a helm-install pod that
fails is not played by chart_jobs.py). Instead of Running and Ready, the node then reports what a kubelet with containerd
reports for that fault (field by field as kubelet's container status for it), and serves `logs` as the failed
container's log (kubelet_api.py):

  image-pull   phase Pending, containers waiting ImagePullBackOff, and the kubelet's `Failed` event with
               containerd's "not found" message
  crash        phase Running, waiting CrashLoopBackOff, last state terminated exit code 1 (Error), 3 restarts
  oom          as crash, but last state terminated OOMKilled, exit code 137
  exec-format  as crash, exit code 255, and `exec <entrypoint>: exec format error` as the log (what runc writes
               when the image is for another architecture)

The read happens when the pod is first played; what the scheduler does (Pending for lack of memory) needs no
fault: it is the real scheduler's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

FILE = "faults.json"
KINDS = ("image-pull", "crash", "oom", "exec-format")
RESTARTS = 3


def inject(plane_dir: Path, owner: str, fault: str, logs: list[str] | None = None) -> None:
    """For tests: make `owner`'s pods fail with `fault` from their next start on."""
    if fault not in KINDS:
        raise ValueError(f"unknown fault {fault!r}: one of {', '.join(KINDS)}")
    path = Path(plane_dir) / FILE
    faults = json.loads(path.read_text()) if path.exists() else {}
    faults[owner] = {"fault": fault, "logs": list(logs or [])}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults))
    tmp.replace(path)  # nodes.py never reads half a file


def clear(plane_dir: Path) -> None:
    (Path(plane_dir) / FILE).unlink(missing_ok=True)


def load(plane_dir: Path) -> dict:
    try:
        return json.loads((Path(plane_dir) / FILE).read_text())
    except (OSError, ValueError):
        return {}


def for_pod(faults: dict, name: str, labels: dict | None) -> dict | None:
    cluster = (labels or {}).get("ray.io/cluster")
    job = (labels or {}).get("batch.kubernetes.io/job-name")
    for owner, fault in faults.items():
        if owner in (cluster, job) or re.fullmatch(rf"{re.escape(owner)}-[a-z0-9]{{6,10}}-[a-z0-9]{{5}}", name):
            return fault
    return None


def logs(fault: dict, image: str, command: list[str] | None) -> list[str]:
    if fault["fault"] == "exec-format" and not fault["logs"]:
        return [f"exec {(command or ['/docker-entrypoint.sh'])[0]}: exec format error"]
    return fault["logs"]


def container_status(fault: dict, base: dict, t: str) -> dict:
    """A kubelet's status of the first container of a pod with `fault` (`base`: name, image, ids)."""
    kind = fault["fault"]
    if kind == "image-pull":
        return dict(
            base,
            imageID="",
            containerID=None,
            ready=False,
            started=False,
            restartCount=0,
            state={"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{base["image"]}"'}},
        )
    code, reason = {"crash": (1, "Error"), "oom": (137, "OOMKilled"), "exec-format": (255, "Error")}[kind]
    return dict(
        base,
        ready=False,
        started=False,
        restartCount=RESTARTS,
        state={
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 40s restarting failed container={base['name']}",
            }
        },
        lastState={
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": t,
                "finishedAt": t,
                "containerID": base["containerID"],
            }
        },
    )


def pull_event_message(image: str) -> str:
    """containerd's message for an image that does not exist, as the kubelet's `Failed` event carries it."""
    return (
        f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image '
        f'"{image}": failed to resolve reference "{image}": {image}: not found'
    )
