"""Why something is not ready, in plain words, from its pods' container statuses, their logs and events.

Each finding is one Problem: where (the object), what happened, how to fix it.
"""

from __future__ import annotations

import shlex

from piml.errors import Problem
from piml.kube.client import Kube, KubeError
from piml.kube.objects import dig
from piml.plan.quantities import memory_mi

LOG_LINES = 10
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# Which piml.yaml block sizes the pods of each component (piml.io/component on KubeRay's pods, else app.kubernetes.io/name).
SETTINGS = {
    "mlflow": "mlflow.resources",
    "dask-scheduler": "dask.scheduler",
    "dask-worker": "dask.worker",
    "ray-head": "ray.head",
    "ray-worker": "ray.worker",
    "redis": "queue.resources",
    "rabbitmq": "queue.resources",
}


def pod_selector(obj: dict) -> str | None:
    """The label selector of the pods behind a Deployment, a RayCluster or a RayService (the cluster KubeRay made
    for it: piml's serving pods, templates/serve.yaml.j2)."""
    if obj["kind"] == "RayCluster":
        return f"ray.io/cluster={obj['metadata']['name']}"
    if obj["kind"] == "RayService":
        project = dig(obj, "metadata", "labels", "piml.io/project", default="")
        return ",".join(
            ([f"piml.io/project={project}"] if project else []) + ["piml.io/component in (serve-head,serve-worker)"]
        )
    labels = dig(obj, "spec", "selector", "matchLabels", default={})
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None


def diagnose(kube: Kube, obj: dict, where: str, waited: float) -> list[Problem]:
    """Problems explaining why `obj` (the live Deployment / RayCluster / RayService) is not ready after `waited`
    seconds."""
    namespace = obj["metadata"].get("namespace", "")
    selector = pod_selector(obj)
    found = pod_problems(kube, namespace, selector, where) if selector else []
    if found:
        return found
    name = obj["metadata"]["name"]
    if obj["kind"] == "RayService":  # its pods run: what KubeRay and Ray Serve say is where to look
        hint = (
            f"see `kubectl -n {namespace} describe rayservice {name}` and the serving head's log: "
            f"`kubectl -n {namespace} logs -l piml.io/component=serve-head --tail=50`"
        )
    elif selector:
        hint = f"see `kubectl -n {namespace} describe pod -l {shlex.quote(selector)}`"
    else:
        hint = f"see `kubectl -n {namespace} describe {obj['kind'].lower()} {name}`"
    return [Problem(where, f"not ready after {waited:.0f} s ({progress_text(obj)})", hint)]


def progress_text(obj: dict) -> str:
    status = obj.get("status") or {}
    if obj["kind"] == "Deployment":
        want = dig(obj, "spec", "replicas", default=1)
        return f"{dig(status, 'availableReplicas', default=0)} of {want} replicas available"
    if obj["kind"] == "RayCluster":
        return f"state {status.get('state') or 'not set yet'}"
    if obj["kind"] == "RayService":
        from piml.kube.wait import readiness

        ready: dict = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        said = (ready.get("message") or "").strip()
        return readiness(obj)[1] + (f"; KubeRay: {said[:200]}" if said else "")
    return "no status"


def pod_problems(kube: Kube, namespace: str, selector: str, where: str) -> list[Problem]:
    listing = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector})
    pods = dig(listing, "items", default=[])
    # Replicas fail alike: say it once, with how many more pods it is true of (their names differ).
    first: dict[str, tuple[Problem, int]] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        for problem in _pod(kube, pod, where):
            key = str(problem).replace(name, "<pod>")
            seen, more = first.get(key, (problem, -1))
            first[key] = (seen, more + 1)
    return [
        Problem(p.where, f"{p.what} ({more} more pod{'s' if more > 1 else ''} alike)", p.fix) if more else p
        for p, more in first.values()
    ]


def _pod(kube: Kube, pod: dict, where: str) -> list[Problem]:
    spec, status = dig(pod, "spec", default={}), dig(pod, "status", default={})
    name = pod["metadata"]["name"]
    containers = {c["name"]: c for c in dig(spec, "initContainers", default=[]) + dig(spec, "containers", default=[])}
    problems = []
    for cs in dig(status, "initContainerStatuses", default=[]) + dig(status, "containerStatuses", default=[]):
        container = containers.get(cs["name"], {})
        image = container.get("image") or cs.get("image", "?")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = ((cs.get("lastState") or {}).get("terminated")) or ((cs.get("state") or {}).get("terminated")) or {}
        if waiting.get("reason") in PULL_REASONS:
            problems.append(
                Problem(
                    where,
                    f"image {image} cannot be pulled ({waiting['reason']}{_pull_detail(kube, pod)})",
                    "check the image name and tag, and that the nodes can reach its registry",
                )
            )
        elif last.get("reason") == "OOMKilled":
            limit = dig(container, "resources", "limits", "memory", default="unset")
            labels = dig(pod, "metadata", "labels", default={})
            setting = SETTINGS.get(labels.get("piml.io/component") or labels.get("app.kubernetes.io/name", ""))
            problems.append(
                Problem(
                    where,
                    f"container {cs['name']} was killed for using more than its memory limit {limit}",
                    f"raise it in piml.yaml ({setting}.limits.memory)" if setting else "raise it in piml.yaml",
                )
            )
        elif waiting.get("reason") in ("CrashLoopBackOff", "RunContainerError") or (
            last.get("exitCode", 0) != 0 and not cs.get("ready")
        ):
            lines = _logs(kube, pod, cs["name"])
            if any("exec format error" in line for line in lines) or "exec format error" in (last.get("message") or ""):
                node = spec.get("nodeName", "?")
                problems.append(
                    Problem(
                        where,
                        f"image {image} is built for another architecture than node {node} ({_arch(kube, node)})",
                        "use an image built for that architecture, or a multi-arch one"
                        + ("; Ray's arm64 images are the tags ending in -aarch64" if "rayproject/ray" in image else ""),
                    )
                )
            else:
                code = last.get("exitCode", "?")
                shown = "\n".join(f"    | {line}" for line in lines) if lines else "    (the log is empty)"
                problems.append(
                    Problem(
                        where,
                        f"container {cs['name']} keeps crashing (exit code {code}, pod {name})",
                        f"its last log lines say what went wrong:\n{shown}",
                    )
                )
    if status.get("phase") == "Pending" and not spec.get("nodeName"):
        problems += _unschedulable(kube, pod, where)
    return problems


def _events(kube: Kube, pod: dict) -> list[dict]:
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    try:
        events = kube.request(
            "GET", f"/api/v1/namespaces/{namespace}/events", {"fieldSelector": f"involvedObject.name={name}"}
        )
        events = dig(events, "items", default=[])
    except KubeError:
        return []
    return sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _pull_detail(kube: Kube, pod: dict) -> str:
    for event in reversed(_events(kube, pod)):
        message = event.get("message") or ""
        if event.get("reason") == "Failed" and "pull" in message.lower():
            tail = message.rsplit(": ", 1)[-1].strip()
            return f": {tail}" if tail and len(tail) < 120 else ""
    return ""


def _logs(kube: Kube, pod: dict, container: str) -> list[str]:
    path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}/log"
    for previous in ("true", None):  # the crashed run's log, else the current one
        try:
            text = kube.request(
                "GET", path, {"container": container, "tailLines": LOG_LINES, "previous": previous}, text=True
            )
        except KubeError:
            continue
        return [line for line in text.splitlines() if line.strip()][-LOG_LINES:]
    return []


def _arch(kube: Kube, node: str) -> str:
    obj = kube.get(f"/api/v1/nodes/{node}") if node and node != "?" else None
    if not obj:
        return "unknown architecture"
    return dig(obj, "status", "nodeInfo", "architecture") or dig(
        obj, "metadata", "labels", "kubernetes.io/arch", default="unknown architecture"
    )


def fmt_memory(mebibytes: int) -> str:
    return f"{mebibytes // 1024}Gi" if mebibytes and mebibytes % 1024 == 0 else f"{mebibytes}Mi"


def _requested_memory(spec: dict) -> int:
    def mem(c):
        value = dig(c, "resources", "requests", "memory")
        return memory_mi(value) if value else 0

    running = sum(mem(c) for c in dig(spec, "containers", default=[]))
    return max(running, max((mem(c) for c in dig(spec, "initContainers", default=[])), default=0))


def free_memory(kube: Kube) -> dict[str, tuple[int, int]]:
    """Per node: (MiB allocatable minus what scheduled pods request, MiB allocatable)."""
    nodes = dig(kube.request("GET", "/api/v1/nodes"), "items", default=[])
    pods = dig(kube.request("GET", "/api/v1/pods"), "items", default=[])
    free = {}
    for node in nodes:
        name = node["metadata"]["name"]
        allocatable = memory_mi(dig(node, "status", "allocatable", "memory", default="0"))
        used = sum(
            _requested_memory(dig(p, "spec", default={}))
            for p in pods
            if dig(p, "spec", "nodeName") == name and dig(p, "status", "phase") not in ("Succeeded", "Failed")
        )
        free[name] = (allocatable - used, allocatable)
    return free


def _unschedulable(kube: Kube, pod: dict, where: str) -> list[Problem]:
    name = pod["metadata"]["name"]
    messages = [e.get("message", "") for e in _events(kube, pod) if e.get("reason") == "FailedScheduling"]
    messages += [
        c.get("message", "")
        for c in dig(pod, "status", "conditions", default=[])
        if c.get("type") == "PodScheduled" and c.get("status") == "False"
    ]
    messages = [m for m in messages if m]
    if not messages:
        return []
    message = (
        messages[-1]
        if not any("Insufficient memory" in m for m in messages)
        else next(m for m in messages if "Insufficient memory" in m)
    )
    if "Insufficient memory" in message:
        wanted = _requested_memory(dig(pod, "spec", default={}))
        nodes = ", ".join(
            f"{n} {fmt_memory(max(f, 0))} of {fmt_memory(a)}" for n, (f, a) in sorted(free_memory(kube).items())
        )
        return [
            Problem(
                where,
                f"pod {name} stays Pending: it requests {fmt_memory(wanted)} of memory and no node has that much free "
                f"(free: {nodes or 'no nodes'})",
                "lower its memory request in piml.yaml, switch a component off, or add a node",
            )
        ]
    first = message.split(". preemption:")[0].strip().rstrip(".")
    return [
        Problem(
            where,
            f"pod {name} cannot be scheduled: {first}",
            "check the node labels and taints the pod needs (piml plan shows where each part goes)",
        )
    ]
