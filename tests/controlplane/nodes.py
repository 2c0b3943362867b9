"""STAND-IN for the kubelets of a k3s cluster (there is no container runtime here). See README.md.

Run by `scripts/control-plane up` as `python nodes.py DIR`; reads DIR/controlplane.json. For each node there
(`nodes`: name, memory, arch, InternalIP; node-1..N by default, or the names `up --node` gave), with that node's
own credentials (system:node:NAME in system:nodes, so the real Node authorizer and NodeRestriction admission judge
every call as they judge a kubelet's):
  - registers the Node (capacity/allocatable, labels, addresses, nodeInfo, conditions Ready and no pressure),
  - renews its Lease in kube-node-lease every 10 s and re-posts its conditions every 60 s, as a kubelet does,
  - for pods the scheduler bound to it: marks them Running (podIP from the node's podCIDR, containers ready,
    conditions True) and, once they are being deleted, deletes them for good (grace 0), as a kubelet does
    after its containers stopped.
With the admin credentials it labels the first node node-role.kubernetes.io/control-plane=true, as the k3s server
process (not the kubelet, which NodeRestriction forbids) does.

Faults: a pod a test made fail (faults.py) gets the status a kubelet reports for that fault, and its log is
served through the API server (kubelet_api.py: the kubelet's HTTPS API, container logs only).

Not done: no containers run, no probes, no images pulled, no volumes mounted, no exec/port-forward,
no evictions or resource accounting; Job pods stay Running (never Succeeded), but for k3s's helm-install and
helm-delete pods, which chart_jobs.py plays to Succeeded, KubeRay's redis-cleanup pods (GCS fault tolerance:
played as if the keys were deleted, Succeeded), and local-path-provisioner's helper pods, which
local_path.py plays to Succeeded (making or removing the volume's directory under DIR/run/<node>/); restartPolicy is
ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
import signal
import sys
import threading
import uuid
from pathlib import Path

import chart_jobs  # the STAND-IN of klipper-helm's containers (beside this file)
import faults  # the faults a test injects (beside this file)
import kubelet_api  # the kubelet's HTTPS API: container logs (beside this file)
import local_path  # local-path-provisioner's helper pods (beside this file)
from kubernetes import client
from kubernetes.client.rest import ApiException

TIMEOUT = 10  # every API call is bounded
POLL = 0.25  # pods are looked at four times a second (a kubelet reacts to watch events at once)
LEASE_EVERY = 10.0  # kubelet: nodeLeaseDurationSeconds 40, renewed every 10 s
STATUS_EVERY = 60.0
KUBELET_VERSION = "v1.36.3+k3s1"  # what a node of the pinned k3s reports
EVICTION_MEMORY_MI = 100  # kubelet's default eviction-hard memory.available<100Mi (k3s keeps it)
EPHEMERAL_GI = 64  # a 64 GB card / NVMe
EVICTION_NODEFS = 0.05  # k3s: nodefs.available<5%

stop = threading.Event()


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_quantity_ki(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q.strip())
    if not m:
        raise ValueError(f"--node-memory {q!r}: write e.g. 8Gi, 4096Mi")
    mult = {None: 1 / 1024, "Ki": 1, "Mi": 1024, "Gi": 1024**2, "Ti": 1024**3}[m.group(2)]
    return int(int(m.group(1)) * mult)


def api_client(state: dict, cert: str, key: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = state["server"]
    cfg.ssl_ca_cert = state["tls"]["server-ca"]
    cfg.cert_file, cfg.key_file = cert, key
    cfg.verify_ssl = True
    return client.ApiClient(cfg)


def log(msg: str) -> None:
    print(f"{now()} {msg}", flush=True)


class Node:
    def __init__(self, state: dict, index: int, spec: dict):
        self.name = spec["name"]
        self.index = index  # 1-based, in the order of state["nodes"]
        self.arch = spec["arch"]
        self.state = state
        tls = state["tls"]
        self.api = api_client(state, tls[f"client-node-{self.name}"], tls[f"client-node-{self.name}-key"])
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.ip = spec["ip"]  # 127.0.0.(100+index), as in its serving certificate (certs.py)
        self.uid = None
        self.used_ips: set[str] = set()
        self.next_ip = 2
        self.played: set[str] = set()  # pods (uid) already given their status: a failed pull stays Pending
        self.faults: dict = {}  # DIR/faults.json as last read (sync_pods)
        self.logs = kubelet_api.Logs()
        self.kubelet = kubelet_api.serve(
            self.ip,
            tls[f"serving-kubelet-{self.name}"],
            tls[f"serving-kubelet-{self.name}-key"],
            tls["client-ca"],
            self.logs,
            state["kubelet_streams"],
        )
        mem_ki = parse_quantity_ki(spec["memory"])
        self.capacity = {
            "cpu": "4",
            "memory": f"{mem_ki}Ki",
            "pods": "110",
            "ephemeral-storage": f"{EPHEMERAL_GI * 1024 * 1024}Ki",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        }
        self.allocatable = dict(
            self.capacity,
            memory=f"{mem_ki - EVICTION_MEMORY_MI * 1024}Ki",
            **{"ephemeral-storage": str(int(EPHEMERAL_GI * 1024**3 * (1 - EVICTION_NODEFS)))},
        )

    # --- node and lease -------------------------------------------------------------------------------
    def conditions(self) -> list[dict]:
        t = now()

        def c(type_, status, reason, message):
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.since,
            }

        return [
            c("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            c("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            c("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            c("Ready", "True", "KubeletReady", "kubelet is posting ready status (piml test stand-in)"),
        ]

    def status(self) -> dict:
        arch = self.arch
        seed = hashlib.sha256(f"{self.state['dir']}/{self.name}".encode()).hexdigest()
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": self.conditions(),
            "addresses": [{"type": "InternalIP", "address": self.ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.server_address[1]}},
            "nodeInfo": {
                "machineID": seed[:32],
                "systemUUID": str(uuid.UUID(seed[32:64])),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": "piml-standin",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://piml-standin",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        }

    def register(self) -> None:
        self.since = now()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/arch": self.arch,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": self.name,
                    "beta.kubernetes.io/arch": self.arch,
                    "beta.kubernetes.io/os": "linux",
                    "node.kubernetes.io/instance-type": "k3s",
                },
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
            },
            "spec": {"providerID": f"k3s://{self.name}"},
        }
        try:
            node = self.core.create_node(body, _request_timeout=TIMEOUT)
        except ApiException as e:
            if e.status != 409:
                raise
            node = self.core.read_node(self.name, _request_timeout=TIMEOUT)
        self.uid = node.metadata.uid
        self.post_status()

    def post_status(self) -> None:
        self.core.patch_node_status(self.name, {"status": self.status()}, _request_timeout=TIMEOUT)

    def renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}],
            },
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
        }
        try:
            self.coord.patch_namespaced_lease(
                self.name, "kube-node-lease", {"spec": body["spec"]}, _request_timeout=TIMEOUT
            )
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body, _request_timeout=TIMEOUT)

    # --- pods -----------------------------------------------------------------------------------------
    def pod_ip(self, pod) -> str:
        if pod.spec.host_network:
            return self.ip
        node = self.core.read_node(self.name, _request_timeout=TIMEOUT)
        cidr = node.spec.pod_cidr or f"10.42.{self.index - 1}.0/24"  # the controller-manager allocates it
        net = ipaddress.ip_network(cidr)
        for _ in range(net.num_addresses):
            ip = str(net.network_address + self.next_ip)
            self.next_ip = self.next_ip + 1 if self.next_ip + 1 < net.num_addresses - 1 else 2
            if ip not in self.used_ips:
                return ip
        raise RuntimeError(f"{self.name}: no free pod IP in {cidr}")

    def run_pod(self, pod) -> None:
        t = now()
        ip = self.pod_ip(pod)

        def cs(c, init=False):
            base = {
                "name": c.name,
                "image": c.image,
                "imageID": f"piml-standin://{c.image}",
                "containerID": f"containerd://{hashlib.sha256((pod.metadata.uid + c.name).encode()).hexdigest()}",
                "restartCount": 0,
            }
            if init:
                return dict(
                    base,
                    ready=True,
                    started=False,
                    state={"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}},
                )
            return dict(base, ready=True, started=True, state={"running": {"startedAt": t}})

        fault = self.failing(pod)

        def cond(type_):
            ok = fault is None or type_ in ("PodScheduled", "Initialized", "PodReadyToStartContainers")
            return {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": t}

        status = {
            "phase": "Running",
            "hostIP": self.ip,
            "hostIPs": [{"ip": self.ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": t,
            "qosClass": pod.status.qos_class if pod.status else None,
            "conditions": [
                cond("PodReadyToStartContainers"),
                cond("Initialized"),
                cond("ContainersReady"),
                cond("Ready"),
                cond("PodScheduled"),
            ],
            "containerStatuses": [cs(c) for c in pod.spec.containers],
            "initContainerStatuses": [cs(c, init=True) for c in (pod.spec.init_containers or [])],
        }
        if fault is not None:  # the first container fails as the test asked (faults.py); the others run
            first = pod.spec.containers[0]
            status["containerStatuses"][0] = faults.container_status(fault, cs(first), t)
            if fault["fault"] == "image-pull":
                status["phase"] = "Pending"
                self.event(pod, "Failed", faults.pull_event_message(first.image), "Warning")
            else:
                previous = faults.logs(fault, first.image, first.command)
                self.logs.record(pod.metadata.namespace, pod.metadata.name, first.name, [], previous)
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, pod.metadata.namespace, {"status": status}, _request_timeout=TIMEOUT
        )
        self.used_ips.add(ip)
        self.played.add(pod.metadata.uid)
        shown = f"{fault['fault']} (injected)" if fault else "Running"
        log(f"{self.name}: pod {pod.metadata.namespace}/{pod.metadata.name} {shown} at {ip}")

    def failing(self, pod) -> dict | None:
        """The fault a test injected for this pod (faults.py), if any, as read at the start of this pass."""
        return faults.for_pod(self.faults, pod.metadata.name, pod.metadata.labels)

    def event(self, pod, reason: str, message: str, type_: str = "Normal") -> None:
        """An event about `pod` from this node's kubelet, as a kubelet records one."""
        t = now()
        body = {
            "metadata": {"generateName": f"{pod.metadata.name}.", "namespace": pod.metadata.namespace},
            "involvedObject": {
                "kind": "Pod",
                "namespace": pod.metadata.namespace,
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": t,
            "lastTimestamp": t,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.name,
        }
        self.core.create_namespaced_event(pod.metadata.namespace, body, _request_timeout=TIMEOUT)

    def sync_pods(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.name}", _request_timeout=TIMEOUT
        ).items
        self.faults = faults.load(Path(self.state["dir"]))  # once a pass, not once a pod
        self.used_ips = {p.status.pod_ip for p in pods if p.status and p.status.pod_ip}
        for pod in pods:
            if stop.is_set():
                return
            try:
                if pod.metadata.deletion_timestamp:
                    self.core.delete_namespaced_pod(
                        pod.metadata.name,
                        pod.metadata.namespace,
                        grace_period_seconds=0,
                        body=client.V1DeleteOptions(
                            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                        ),
                        _request_timeout=TIMEOUT,
                    )
                    self.logs.forget_pod(pod.metadata.namespace, pod.metadata.name)
                    log(f"{self.name}: pod {pod.metadata.namespace}/{pod.metadata.name} stopped and deleted")
                elif (pod.status.phase or "Pending") == "Pending" and pod.metadata.uid not in self.played:
                    self.run_pod(pod)
                elif pod.status.phase == "Running" and chart_jobs.is_helm_job_pod(pod) and not self.failing(pod):
                    chart_jobs.play(self, pod, log)  # k3s's helm-install/-delete pods: see chart_jobs.py
                elif (
                    pod.status.phase == "Running"
                    and not self.failing(pod)
                    and (pod.metadata.labels or {}).get("ray.io/node-type") == "redis-cleanup"
                ):
                    # KubeRay's GCS fault-tolerance cleanup Job, made when a RayCluster with it is deleted: its
                    # container would delete the cluster's keys in Redis. Played as done (exit 0).
                    chart_jobs.finish_pod(self, pod, 0)
                    log(f"{self.name}: redis-cleanup pod {pod.metadata.namespace}/{pod.metadata.name} Succeeded")
                elif pod.status.phase == "Running" and local_path.is_helper_pod(pod):
                    local_path.play(self, pod, log)  # local-path's helper-pod-create/-delete: see local_path.py
            except ApiException as e:
                if e.status not in (404, 409):
                    log(f"{self.name}: pod {pod.metadata.namespace}/{pod.metadata.name}: {e.status} {e.reason}")

    def loop(self) -> None:
        import time

        last_lease = last_status = 0.0
        registered = False
        while not stop.is_set():
            t = time.monotonic()
            try:
                if not registered:
                    self.register()
                    registered = True
                    last_status = t
                    log(f"{self.name}: registered")
                if t - last_lease >= LEASE_EVERY:
                    self.renew_lease()
                    last_lease = t
                if t - last_status >= STATUS_EVERY:
                    self.post_status()
                    last_status = t
                self.sync_pods()
            except Exception as e:  # keep going: the API server may be briefly away, as for a kubelet
                log(f"{self.name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            stop.wait(POLL)


def label_control_plane(state: dict) -> None:
    """What the k3s server does for its own node (the first: the server k3s-ansible starts first): node-role labels
    a kubelet may not set on itself."""
    tls = state["tls"]
    first = state["nodes"][0]["name"]
    core = client.CoreV1Api(api_client(state, tls["client-admin"], tls["client-admin-key"]))
    while not stop.is_set():
        try:
            core.patch_node(
                first,
                {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}},
                _request_timeout=TIMEOUT,
            )
            log(f"{first}: labelled node-role.kubernetes.io/control-plane=true")
            return
        except Exception as e:
            if not (isinstance(e, ApiException) and e.status == 404):
                log(f"labelling {first}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        stop.wait(0.5)


def main(argv: list[str]) -> int:
    d = Path(argv[0])
    state = json.loads((d / "controlplane.json").read_text())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    nodes = [Node(state, i, spec) for i, spec in enumerate(state["nodes"], 1)]
    threads = [threading.Thread(target=n.loop, name=n.name, daemon=True) for n in nodes]
    threads.append(threading.Thread(target=label_control_plane, args=(state,), daemon=True))
    for t in threads:
        t.start()
    shown = ", ".join(f"{n['name']} ({n['arch']}, {n['memory']})" for n in state["nodes"])
    log(f"node stand-in: {len(nodes)} nodes: {shown}; against {state['server']}")
    while not stop.is_set():
        stop.wait(1)
    for t in threads:
        t.join(timeout=TIMEOUT + 2)
    log("node stand-in: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
