"""k3s's local-path storage, with the REAL local-path-provisioner built from its Go module. See README.md.

What k3s deploys from its manifests/local-storage.yaml is made here by `up` (start()), written by us with the same
settings (read in k3s-io/k3s manifests/local-storage.yaml):
  - ServiceAccount kube-system/local-path-provisioner-service-account, ClusterRole local-path-provisioner-role
    (nodes, PVCs, configmaps, pods/log: read; endpoints, PVs, pods: all; events: create, patch; storageclasses:
    read) and its ClusterRoleBinding;
  - ConfigMap kube-system/local-path-config: config.json with nodePathMap DEFAULT_PATH_FOR_NON_LISTED_NODES ->
    /var/lib/rancher/k3s/storage (k3s fills in its data dir + /storage), the setup script (mkdir 0777 the volume
    directory, chmod 700 its parent), the teardown script (rm -rf it) and helperPod.yaml (one container, k3s's
    busybox image: nothing pulls it here);
  - StorageClass local-path, the default class (annotation storageclass.kubernetes.io/is-default-class), provisioner
    rancher.io/local-path, WaitForFirstConsumer, reclaim Delete, annotation defaultVolumeType: local (PVs are
    `local` volumes with node affinity).
Instead of k3s's Deployment, the provisioner runs as a process (`local-path-provisioner start --config ...`, the
command of k3s's Deployment) against the API server with its ServiceAccount's token (so k3s's ClusterRole is what
authorizes it), the ConfigMap's files written where the Deployment would mount them (DIR/run/local-path-provisioner/
config), POD_NAMESPACE=kube-system.

The provisioner makes a helper pod `helper-pod-create-<pv>` (or `helper-pod-delete-<pv>`) in kube-system, bound to
the node the scheduler chose for the claim, and waits for it to succeed. The kubelet stand-in (nodes.py) plays it
with play() below: what the setup/teardown script does (mkdir 0777 / rm -rf the volume directory), under
DIR/run/<node>/ (a node's root), then the pod Succeeded. The scripts themselves are not run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules"

VERSION = "v0.0.33"  # k3s v1.36.x ships v0.0.36, which the Go proxy refuses; v0.0.33 is the newest it serves
BINARY = "local-path-provisioner"
NAMESPACE = "kube-system"
PROVISIONER = "rancher.io/local-path"
SERVICE_ACCOUNT = "local-path-provisioner-service-account"
CONFIGMAP = "local-path-config"
STORAGE_PATH = "/var/lib/rancher/k3s/storage"  # k3s: DEFAULT_LOCAL_STORAGE_PATH = <data dir>/storage
HELPER_IMAGE = "rancher/mirrored-library-busybox:1.36.1"  # in k3s's helperPod.yaml (nothing pulls it here)
HELPER_POD = re.compile(r"^helper-pod-(create|delete)-")


def build_step(bin_dir: Path) -> tuple[str, Path, dict, list[str]]:
    """As its scripts/build: CGO off, version in main.VERSION, -extldflags -static -s -w (one GOARCH: the host's)."""
    args = [
        "build",
        "-ldflags",
        f"-X main.VERSION={VERSION} -extldflags -static -s -w",
        "-o",
        str(bin_dir / BINARY),
        "github.com/rancher/local-path-provisioner",
    ]
    return ("local-path-provisioner", MODULES / "local-path-provisioner", {"CGO_ENABLED": "0"}, args)


# --- the objects of k3s's local-storage.yaml (our text, its settings) ------------------------------------------------
CONFIG = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [STORAGE_PATH]}]}
SETUP = '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "${VOL_DIR}"\nchmod 700 "${VOL_DIR}/.."\n'
TEARDOWN = '#!/bin/sh\nset -eu\nrm -rf "${VOL_DIR}"\n'
HELPER_POD_YAML = (
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: helper-pod\nspec:\n  containers:\n  - name: helper-pod\n"
    f'    image: "{HELPER_IMAGE}"\n    imagePullPolicy: IfNotPresent\n'
)
CONFIG_FILES = {
    "config.json": json.dumps(CONFIG, indent=2),
    "setup": SETUP,
    "teardown": TEARDOWN,
    "helperPod.yaml": HELPER_POD_YAML,
}


def objects() -> list[tuple[str, dict]]:
    """(collection path, body) of what k3s's local-storage.yaml makes, but its Deployment."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    return [
        (
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}},
        ),
        (
            f"{rbac}/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "local-path-provisioner-role"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods/log"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {"apiGroups": [""], "resources": ["endpoints", "persistentvolumes", "pods"], "verbs": ["*"]},
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                    {
                        "apiGroups": ["storage.k8s.io"],
                        "resources": ["storageclasses"],
                        "verbs": ["get", "list", "watch"],
                    },
                ],
            },
        ),
        (
            f"{rbac}/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "local-path-provisioner-bind"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "local-path-provisioner-role",
                },
                "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
            },
        ),
        (
            f"/api/v1/namespaces/{NAMESPACE}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP}, "data": CONFIG_FILES},
        ),
        (
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": "local-path",
                    "annotations": {
                        "defaultVolumeType": "local",
                        "storageclass.kubernetes.io/is-default-class": "true",
                    },
                },
                "provisioner": PROVISIONER,
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            },
        ),
        # The ServiceAccount's token for the process (in k3s, the kubelet mounts a projected one into the pod).
        (
            f"/api/v1/namespaces/{NAMESPACE}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "name": "local-path-provisioner-token",
                    "annotations": {"kubernetes.io/service-account.name": SERVICE_ACCOUNT},
                },
            },
        ),
    ]


# --- in `up` ---------------------------------------------------------------------------------------------------------
def start(up) -> None:
    """Make k3s's local-path objects, then run the provisioner as the ServiceAccount (waits bounded)."""
    import base64

    from . import addons, cluster

    d, st = up.d, up.state
    server, ctx = st["server"], cluster._ssl_ctx(st["tls"])
    for collection, body in objects():
        addons.create(server, ctx, collection, body)

    def token() -> tuple[bool, str]:
        code, secret = addons._get_json(
            f"{server}/api/v1/namespaces/{NAMESPACE}/secrets/local-path-provisioner-token", ctx
        )
        return bool((secret.get("data") or {}).get("token")), f"token Secret: HTTP {code}, no token yet"

    up.wait("kube-controller-manager (the provisioner's token)", None, token, 30, "kube-controller-manager.log")
    _, secret = addons._get_json(f"{server}/api/v1/namespaces/{NAMESPACE}/secrets/local-path-provisioner-token", ctx)
    kubeconfig = d / "kubeconfigs" / "local-path-provisioner.yaml"
    _write_kubeconfig(kubeconfig, server, Path(st["tls"]["server-ca"]), base64.b64decode(secret["data"]["token"]))
    mount = d / "run" / "local-path-provisioner" / "config"  # where the Deployment mounts the ConfigMap
    mount.mkdir(parents=True, exist_ok=True)
    for name, text in CONFIG_FILES.items():
        (mount / name).write_text(text)
    p = up.spawn(
        "local-path-provisioner",
        [
            str(up.bin / BINARY),
            "--debug",
            "start",
            f"--config={mount / 'config.json'}",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={NAMESPACE}",
            f"--configmap-name={CONFIGMAP}",
            f"--service-account-name={SERVICE_ACCOUNT}",
            f"--provisioner-name={PROVISIONER}",
        ],
        env={**cluster._clean_env(), "POD_NAMESPACE": NAMESPACE},
    )
    log = d / "logs" / "local-path-provisioner.log"
    up.wait(
        "local-path-provisioner (controller started)",
        p,
        lambda: (
            "Started provisioner controller" in log.read_text(errors="replace"),
            "no 'Started provisioner controller' in its log yet",
        ),
        30,
        "local-path-provisioner.log",
    )


def _write_kubeconfig(path: Path, server: str, ca: Path, token: bytes) -> None:
    """A kubeconfig with the ServiceAccount's token (mode 0600), what in-cluster config gives a pod."""
    import base64
    import os

    text = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "default",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "default", "user": {"token": token.decode()}}],
            "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
            "current-context": "default",
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --- in nodes.py: the helper pods ------------------------------------------------------------------------------------
def is_helper_pod(pod) -> bool:
    return (
        pod.metadata.namespace == NAMESPACE
        and bool(HELPER_POD.match(pod.metadata.name))
        and len(pod.spec.containers) == 1
        and any(e.name == "VOL_DIR" for e in pod.spec.containers[0].env or [])
    )


def host_dir(node_root: Path, pod) -> Path:
    """The volume directory on the node's root: VOL_DIR (in the container) through the `data` hostPath mount."""
    c = pod.spec.containers[0]
    vol_dir = next(e.value for e in c.env if e.name == "VOL_DIR")
    mount = next(m for m in c.volume_mounts or [] if m.name == "data")
    host = next(v.host_path.path for v in pod.spec.volumes or [] if v.name == "data" and v.host_path)
    rel = Path(vol_dir).relative_to(mount.mount_path)
    target = (node_root / Path(host).relative_to("/") / rel).resolve()
    root = node_root.resolve()
    if root not in target.parents or not rel.parts:
        raise ValueError(f"volume directory {vol_dir} is not under the node's root")
    return target


def play(node, pod, log) -> None:
    """Play a Running helper pod to its end: the setup/teardown script's effect, then Succeeded (Failed if that
    failed)."""
    import chart_jobs

    action = HELPER_POD.match(pod.metadata.name).group(1)
    where = f"{pod.metadata.namespace}/{pod.metadata.name}"
    try:
        target = host_dir(Path(node.state["dir"]) / "run" / node.name, pod)
        if action == "create":
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
            target.parent.chmod(0o700)
        else:
            shutil.rmtree(target, ignore_errors=True)
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        chart_jobs.finish_pod(node, pod, 1, msg)
        log(f"{node.name}: local-path helper pod {where} Failed: {msg}")
        return
    # The scripts print nothing: an empty log, which the provisioner reads (pods/log) and copies into its own.
    node.logs.record(pod.metadata.namespace, pod.metadata.name, pod.spec.containers[0].name, [], None)
    chart_jobs.finish_pod(node, pod, 0)
    log(f"{node.name}: local-path helper pod {where} Succeeded ({action} {target})")
