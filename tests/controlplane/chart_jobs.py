"""STAND-IN for the klipper-helm containers of k3s's helm-install / helm-delete Jobs (no chart is fetched or
rendered here: there is no network and no container runtime). See README.md.

The REAL helm-controller (addons.py) turns a HelmChart into a Job `helm-install-<chart>` (or `helm-delete-<chart>`
when the HelmChart is being deleted) in the HelmChart's namespace, running the klipper-helm image as the
ServiceAccount `helm-<chart>`, which it binds to cluster-admin. The real scheduler binds the Job's pod to a node;
the node stand-in (nodes.py) marks it Running and, on its next pass, calls `play` here, which does what the chart's
install would leave behind that the tests need, with the pod's own ServiceAccount token (a TokenRequest bound to
the pod, as the kubelet mounts it, so the real authorizer judges the helm-controller's RBAC):

  - install: the chart's CRDs from CHART_CRDS below (created if absent, as helm does with a chart's crds/
    directory), and the target namespace when the HelmChart asks for `createNamespace`;
  - delete: nothing (helm leaves a chart's crds/ in place on uninstall);

then reports the container terminated with exit code 0 and the pod Succeeded, so the REAL job controller
completes the Job and the REAL helm-controller goes on as it does (an uninstall Job that succeeded lets it remove
its finalizer). A chart not in CHART_CRDS installs nothing and succeeds; the log says so. Nothing else of a chart
(its Deployments, RBAC, webhooks) is created: the KubeRay operator runs as a process started by `up` instead.
If the play fails (e.g. the token is refused), the container terminates with exit code 1 and the pod Failed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# ../shared beside the checkout, as tests/render reads it: read there, never copied. PIML_SHARED overrides.
SCHEMAS = Path(os.environ.get("PIML_SHARED", REPO.parent / "shared")) / "schemas"
CACHE = Path(os.environ.get("PIML_CONTROLPLANE_CACHE", "/var/cache/piml-controlplane"))
# The KubeRay operator v1.6.0 (addons.py) watches RayServices too and exits if their CRD is missing; ../shared has
# no RayService schema, so it comes from the operator's own module (config/crd/bases) in the Go module cache.
KUBERAY_MODULE_CRDS = (
    CACHE / "gomodcache" / "github.com" / "ray-project" / "kuberay" / "ray-operator@v1.6.0" / "config" / "crd" / "bases"
)

LABEL_CHART = "helmcharts.helm.cattle.io/chart"  # the helm-controller's label on its Jobs and their pods

# THE TABLE: which CRDs the stand-in's install of a chart creates. Only charts piml renders (templates/) are here.
# ScaledObject is left out: piml renders no ScaledObject.
CHART_CRDS: dict[str, tuple[Path, ...]] = {
    "kuberay-operator": (
        SCHEMAS / "ray.io_rayclusters.yaml",
        SCHEMAS / "ray.io_rayjobs.yaml",
        KUBERAY_MODULE_CRDS / "ray.io_rayservices.yaml",
    ),
    "keda": (SCHEMAS / "keda.sh_scaledjobs.yaml",),
}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_helm_job_pod(pod) -> bool:
    labels = pod.metadata.labels or {}
    return (
        LABEL_CHART in labels
        and any(r.kind == "Job" for r in pod.metadata.owner_references or [])
        and any(c.name == "helm" for c in pod.spec.containers)
    )


def _helm_args(pod) -> list[str]:
    c = next(c for c in pod.spec.containers if c.name == "helm")
    return list(c.args or [])


def _token_client(node, pod):
    """A client with the pod's ServiceAccount token, requested by the node as the kubelet does (bound to the pod)."""
    from kubernetes import client

    sa = pod.spec.service_account_name or "default"
    req = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    }
    tr = node.core.create_namespaced_service_account_token(sa, pod.metadata.namespace, req, _request_timeout=10)
    cfg = client.Configuration()
    cfg.host = node.state["server"]
    cfg.ssl_ca_cert = node.state["tls"]["server-ca"]
    cfg.verify_ssl = True
    cfg.api_key = {"authorization": "Bearer " + tr.status.token}
    return client.ApiClient(cfg)


def _install(api, chart: str, args: list[str], log) -> list[str]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    done = []
    if "--create-namespace" in args and "--namespace" in args:
        ns = args[args.index("--namespace") + 1]
        try:
            client.CoreV1Api(api).create_namespace(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, _request_timeout=10
            )
            done.append(f"namespace {ns}")
        except ApiException as e:
            if e.status != 409:
                raise
    ext = client.ApiextensionsV1Api(api)
    for path in CHART_CRDS.get(chart, ()):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # MBs: C if there
        try:
            # the response is not parsed into models: for CRDs of a megabyte that takes seconds
            ext.create_custom_resource_definition(crd, _request_timeout=30, _preload_content=False).release_conn()
            done.append(f"CRD {crd['metadata']['name']}")
        except ApiException as e:
            if e.status != 409:  # helm skips a crds/ CRD that exists
                raise
            done.append(f"CRD {crd['metadata']['name']} (already there)")
    return done


def finish_pod(node, pod, exit_code: int, message: str = "") -> None:
    """Report the pod's containers terminated with `exit_code` and the pod Succeeded (0) or Failed, as a kubelet does
    when its containers end (restartPolicy Never). Also used for local-path's helper pods (local_path.py)."""
    t = now()
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status and pod.status.start_time else t
    reason = "Completed" if exit_code == 0 else "Error"

    def cs(c):
        old = next((s for s in (pod.status.container_statuses or []) if s.name == c.name), None)
        term = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": t}
        if message:
            term["message"] = message[:1000]
        return {
            "name": c.name,
            "image": c.image,
            "imageID": f"piml-standin://{c.image}",
            "containerID": old.container_id if old else None,
            "restartCount": 0,
            "ready": False,
            "started": False,
            "state": {"terminated": term},
        }

    def cond(type_, status, reason_=None):
        d = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": t}
        if reason_:
            d["reason"] = reason_
        return d

    phase = "Succeeded" if exit_code == 0 else "Failed"
    status = {
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", "False"),
            cond("Initialized", "True"),
            cond("ContainersReady", "False", "PodCompleted" if exit_code == 0 else "PodFailed"),
            cond("Ready", "False", "PodCompleted" if exit_code == 0 else "PodFailed"),
            cond("PodScheduled", "True"),
        ],
        "containerStatuses": [cs(c) for c in pod.spec.containers],
    }
    node.core.patch_namespaced_pod_status(
        pod.metadata.name, pod.metadata.namespace, {"status": status}, _request_timeout=10
    )


def play(node, pod, log) -> None:
    """Play the helm container of a Running helm-install/helm-delete pod to its end (see the module's docstring)."""
    chart = pod.metadata.labels[LABEL_CHART]
    args = _helm_args(pod)
    action = args[0] if args else "install"
    where = f"{pod.metadata.namespace}/{pod.metadata.name}"
    try:
        if action == "install":
            with _token_client(node, pod) as api:
                done = _install(api, chart, args, log)
            what = ", ".join(done) if done else "nothing"
            if chart not in CHART_CRDS:
                what += f" (chart {chart} is not in the stand-in's table)"
        else:
            what = "nothing (helm leaves a chart's CRDs on uninstall)"
    except Exception as e:  # the pod fails, as a helm container that errored would
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        finish_pod(node, pod, 1, msg)
        log(f"{node.name}: helm {action} pod {where} (chart {chart}) Failed: {msg}")
        return
    finish_pod(node, pod, 0)
    log(f"{node.name}: helm {action} pod {where} (chart {chart}) Succeeded; stand-in applied {what}")
