"""A STAND-IN for the Kubernetes API server: small, stateful, in-process, loopback only.

It speaks enough of the real REST API for the official `kubernetes` Python client and for piml's
apply / wait / diagnose / prune / teardown / status code. See README.md for what it does NOT do.

    api = FakeKubeAPI().start()          # 127.0.0.1:<free port>
    api.write_kubeconfig(path)
    api.forward("piml", pod, 6379, local_port)   # pods/portforward of that pod port reaches 127.0.0.1:local_port
    ...
    api.stop()
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.standins.kubeapi import streams, websocket

K8S_VERSION = "v1.36.3+k3s1"


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN = [
    Kind("", "v1", "Namespace", "namespaces", False),
    Kind("", "v1", "Node", "nodes", False),
    Kind("", "v1", "Secret", "secrets", True),
    Kind("", "v1", "ConfigMap", "configmaps", True),
    Kind("", "v1", "Service", "services", True),
    Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
    Kind("", "v1", "PersistentVolume", "persistentvolumes", False),
    Kind("", "v1", "Pod", "pods", True),
    Kind("", "v1", "Event", "events", True),
    Kind("apps", "v1", "Deployment", "deployments", True),
    Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True),
    Kind("networking.k8s.io", "v1", "Ingress", "ingresses", True),
    Kind("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    Kind("helm.cattle.io", "v1", "HelmChart", "helmcharts", True),  # k3s's Helm controller
    Kind("traefik.io", "v1alpha1", "Middleware", "middlewares", True),  # k3s ships Traefik
    Kind("apiregistration.k8s.io", "v1", "APIService", "apiservices", False),
]
# What a HelmChart of that name "installs": the CRDs (served after `crd_delay` seconds).
CHART_CRDS = {
    "kuberay-operator": [
        Kind("ray.io", "v1", "RayCluster", "rayclusters", True),
        Kind("ray.io", "v1", "RayJob", "rayjobs", True),
    ],
    "keda": [
        Kind("keda.sh", "v1alpha1", "ScaledJob", "scaledjobs", True),
        Kind("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects", True),
    ],
}
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
HOSTNAME = "kubernetes.io/hostname"
# pods/portforward: WebSocket upgrades, served by streams.py (the only streaming subresource here; exec runs
# through the real API server on the control plane, tests/controlplane)
STREAM_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(portforward)$")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _content(obj: dict) -> dict:
    """An object without what the server maintains: two equal contents mean 'nothing changed'."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_METADATA}
    return {**{k: v for k, v in obj.items() if k != "metadata"}, "metadata": meta}


def _matches(labels: dict, selector: str) -> bool:
    """Equality-based label selectors: a=b, a==b, a!=b, a, !a (comma-separated, all must hold)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: dict, path: str):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


class FakeKubeAPI:
    """The stand-in API server. Thread-safe: one lock around the store."""

    def __init__(
        self,
        nodes: int = 3,
        node_memory: str = "8032000Ki",
        arch: str = "arm64",
        crd_delay: float = 0.3,
        ready_delay: float = 0.1,
    ):
        self.crd_delay, self.ready_delay = crd_delay, ready_delay
        self.kinds: list[Kind] = list(BUILTIN)
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) -> object
        self.logs: dict[tuple[str, str, str], str] = {}  # (namespace, pod, container) -> log text
        self.history: list[tuple] = []  # (what, kind, namespace, name): what the tests check order on
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self._rv = 0
        self._lock = threading.RLock()
        self._timers: list[tuple[float, callable]] = []  # (when, action): the "controllers"
        self.forwards: dict[tuple[str, str, int], tuple[str, int]] = {}  # (namespace, pod, pod port) -> (host, port)
        self._races: dict[tuple[str, str, str], callable] = {}  # (plural, namespace, name) -> change, see race()
        self._streams: set[websocket.WebSocket] = set()  # open port-forward connections, ended by stop()
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        for name in ("default", "kube-system"):
            self._store(self.kind("Namespace"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for i in range(1, nodes + 1):
            self.add_node(f"pi{i}", memory=node_memory, arch=arch)

    # ---- what tests call -------------------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        threading.Thread(target=self._controllers, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for ws in list(self._streams):  # handler threads blocked on a stream wake up and end
                ws.abort()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }
        path.write_text(yaml.safe_dump(config))

    def add_node(
        self,
        name: str,
        memory: str = "8032000Ki",
        arch: str = "arm64",
        cpu: str = "4",
        pressure: tuple[str, ...] = (),
        address: str | None = None,
        pod_cidr: str | None = None,
    ) -> None:
        """A Ready node; `address` is its InternalIP and `pod_cidr` its spec.podCIDR (k3s gives each node a /24)."""
        conditions = [
            {"type": t, "status": "True" if t in pressure else "False", "reason": f"Kubelet{t}"}
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady"})
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": arch}},
            "status": {
                "capacity": {"cpu": cpu, "memory": memory},
                "allocatable": {"cpu": cpu, "memory": memory},
                "conditions": conditions,
                "nodeInfo": {
                    "kubeletVersion": K8S_VERSION,
                    "architecture": arch,
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                },
            },
        }
        if address:
            node["status"]["addresses"] = [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ]
        if pod_cidr:
            node["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
        with self._lock:
            self._store(self.kind("Node"), node)

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict | None = None,
        containers: tuple[str, ...] = ("main",),
        host_ip: str = "127.0.0.1",
    ) -> dict:
        """A Running, Ready pod of its own (no owner), e.g. to forward to, on a node whose address is
        `host_ip` (the kubelet reports it as status.hostIP). The namespace must exist."""
        with self._lock:
            self._check_namespace(self.kind("Pod"), namespace)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                "spec": {
                    "nodeName": self._nodes()[0],
                    "containers": [{"name": c, "image": "standin"} for c in containers],
                },
                "status": {
                    "phase": "Running",
                    "hostIP": host_ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {
                            "name": c,
                            "image": "standin",
                            "imageID": _image_id("standin"),
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": _now()}},
                        }
                        for c in containers
                    ],
                },
            }
            return copy.deepcopy(self._store(self.kind("Pod"), pod))

    def forward(self, namespace: str, pod: str, pod_port: int, local_port: int, host: str = "127.0.0.1") -> None:
        """pods/portforward to `pod_port` of that pod reaches `host`:`local_port` (a port nothing is registered
        for is refused, as a port nothing listens on in a real pod). The pod must exist when the client connects."""
        with self._lock:
            self.forwards[(namespace, pod, int(pod_port))] = (host, int(local_port))

    def race(self, plural: str, name: str, change, namespace: str = "") -> None:
        """Once: just before the next non-apply PATCH of that object lands, `change(object) -> object` is stored as
        another client's write (a new resourceVersion), so a patch carrying the old resourceVersion gets a 409."""
        with self._lock:
            self._races[(plural, namespace, name)] = change

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    def names(self, plural: str, namespace: str = "") -> set[str]:
        with self._lock:
            return {n for (p, ns, n) in self.objects if p == plural and (not namespace or ns == namespace)}

    def kind(self, kind: str, api_version: str | None = None) -> Kind:
        return next(k for k in self.kinds if k.kind == kind and (api_version is None or k.api_version == api_version))

    # ---- storage ---------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, kind: Kind, obj: dict, old: dict | None = None) -> dict:
        """Write `obj`, keeping server fields of `old`; bump resourceVersion/generation only on a change."""
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        meta = obj.setdefault("metadata", {})
        if kind.kind == "Secret" and "stringData" in obj:  # as the real server does: stringData is folded into data
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if old is not None:
            for key in SERVER_METADATA:
                if key in old["metadata"] and key not in meta:
                    meta[key] = old["metadata"][key]
            if _content(old) == _content(obj):
                return old
            if "spec" in obj and obj.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        else:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
            if "spec" in obj:
                meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        self.objects[(kind.plural, meta.get("namespace", ""), meta["name"])] = obj
        return obj

    # ---- the REST API ----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes, content_type: str) -> tuple[int, object]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = [p for p in parts.path.split("/") if p]
        with self._lock:
            self.requests.append((method, raw_path))
            if path == ["version"]:
                major, minor = K8S_VERSION[1:].split(".")[:2]
                return 200, {"major": major, "minor": minor, "gitVersion": K8S_VERSION, "platform": "linux/arm64"}
            if path == ["api"]:
                return 200, {"kind": "APIVersions", "versions": ["v1"]}
            if path == ["apis"]:
                return 200, self._groups()
            if path in (["api", "v1"],) or (len(path) == 3 and path[0] == "apis"):
                group, version = ("", "v1") if path[0] == "api" else (path[1], path[2])
                return self._resource_list(group, version)
            group, version, rest = (
                ("", "v1", path[2:])
                if path[:2] == ["api", "v1"]
                else (path[1], path[2], path[3:])
                if path[:1] == ["apis"] and len(path) > 3
                else (None, None, None)
            )
            if rest is None:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({parts.path})")
            namespace = ""
            if len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            kind = self._served(group, version, rest[0])
            name = rest[1] if len(rest) > 1 else None
            sub = rest[2] if len(rest) > 2 else None
            if namespace and not kind.namespaced:
                raise ApiError(404, "NotFound", f"{kind.plural} is not namespaced")
            if sub == "log" and kind.kind == "Pod" and method == "GET":
                return 200, self._log(namespace, name, query)
            if sub == "status" and name:
                pass  # status subresource: same object here
            elif sub:
                raise ApiError(404, "NotFound", f"no subresource {sub}")
            if method == "GET":
                return 200, self._get(kind, namespace, name) if name else self._list(kind, namespace, query)
            if method == "POST" and not name:
                return 201, self._create(kind, namespace, _parse(body))
            if method == "PUT" and name:
                return 200, self._replace(kind, namespace, name, _parse(body))
            if method == "PATCH" and name:
                return self._patch(kind, namespace, name, _parse(body), content_type, query)
            if method == "DELETE" and name:
                return 200, self._delete(kind, namespace, name)
            raise ApiError(405, "MethodNotAllowed", f"{method} {parts.path} is not supported by the stand-in")

    def _groups(self) -> dict:
        groups: dict[str, list[str]] = {}
        for k in self.kinds:
            if k.group and k.version not in groups.setdefault(k.group, []):
                groups[k.group].append(k.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ],
        }

    def _resource_list(self, group: str, version: str) -> tuple[int, dict]:
        kinds = [k for k in self.kinds if k.group == group and k.version == version]
        if not kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = []
        for k in kinds:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append(
                {
                    "name": k.plural,
                    "singularName": k.kind.lower(),
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": verbs,
                }
            )
            if k.kind in ("Deployment", "RayCluster", "HelmChart", "CustomResourceDefinition"):
                resources.append(
                    {
                        "name": f"{k.plural}/status",
                        "singularName": "",
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
            if k.kind == "Pod":
                resources.append(
                    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]}
                )
                resources += [
                    {
                        "name": f"pods/{sub}",
                        "singularName": "",
                        "namespaced": True,
                        "kind": f"Pod{kind}Options",
                        "verbs": ["create", "get"],
                    }
                    for sub, kind in (("portforward", "PortForward"),)
                ]
        return 200, {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _served(self, group: str, version: str, plural: str) -> Kind:
        for k in self.kinds:
            if (k.group, k.version, k.plural) == (group, version, plural):
                return k
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _get(self, kind: Kind, namespace: str, name: str) -> dict:
        obj = self.objects.get((kind.plural, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
        return obj

    def _list(self, kind: Kind, namespace: str, query: dict) -> dict:
        items = []
        for (plural, ns, _), obj in sorted(self.objects.items()):
            if plural != kind.plural or (namespace and ns != namespace):
                continue
            if not _matches(obj["metadata"].get("labels", {}), query.get("labelSelector", "")):
                continue
            wanted = [t.split("=", 1) for t in query.get("fieldSelector", "").split(",") if "=" in t]
            if any(str(_field(obj, key) or "") != value for key, value in wanted):
                continue
            items.append(obj)
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _check_namespace(self, kind: Kind, namespace: str) -> None:
        if kind.namespaced and ("namespaces", "", namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _create(self, kind: Kind, namespace: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = namespace
        self._check_namespace(kind, namespace)
        if (kind.plural, namespace, meta.get("name")) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{meta.get("name")}" already exists')
        stored = self._store(kind, obj)
        self._created(kind, stored)
        return stored

    def _replace(self, kind: Kind, namespace: str, name: str, obj: dict) -> dict:
        old = self._get(kind, namespace, name)
        stored = self._store(kind, obj, old)
        self._changed(kind, stored, old)
        return stored

    def _patch(self, kind, namespace, name, patch: dict, content_type: str, query: dict) -> tuple[int, dict]:
        old = self.objects.get((kind.plural, namespace, name))
        if content_type.startswith("application/apply-patch"):
            if not query.get("fieldManager"):
                raise ApiError(400, "BadRequest", "fieldManager is required for apply patch")
            if (patch.get("apiVersion"), patch.get("kind")) != (kind.api_version, kind.kind):
                raise ApiError(400, "BadRequest", "apiVersion and kind in the body must match the URL")
            self._check_namespace(kind, namespace)
            # Server-side apply with ONE manager: the applied configuration is what the manager owns; fields it
            # stops applying go away; what the server (status, server metadata) or controllers set stays.
            new = copy.deepcopy(patch)
            new["metadata"]["name"] = name
            if kind.namespaced:
                new["metadata"]["namespace"] = namespace
            if old is not None and "status" in old:
                new["status"] = old["status"]
            stored = self._store(kind, new, old)
            if stored is not old:
                stored["metadata"]["managedFields"] = [
                    {
                        "manager": query["fieldManager"],
                        "operation": "Apply",
                        "apiVersion": kind.api_version,
                        "time": _now(),
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {},
                    }
                ]
                self.history.append(("apply", kind.kind, namespace, name))
                self._created(kind, stored) if old is None else self._changed(kind, stored, old)
            return (201 if old is None else 200), stored
        if (kind.plural, namespace, name) in self._races:  # another client changes it just before this patch lands
            old = self._store(kind, self._races.pop((kind.plural, namespace, name))(copy.deepcopy(old)), old)
        if old is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            # A resourceVersion in the patch is a precondition, as on the real server (optimistic concurrency).
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != old["metadata"].get("resourceVersion"):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            stored = self._store(kind, _merge(copy.deepcopy(old), patch), old)
            self._changed(kind, stored, old)
            return 200, stored
        raise ApiError(415, "UnsupportedMediaType", f"the stand-in does not support {content_type}")

    def _delete(self, kind: Kind, namespace: str, name: str) -> dict:
        obj = self._get(kind, namespace, name)
        del self.objects[(kind.plural, namespace, name)]
        self.history.append(("delete", kind.kind, namespace, name))
        uid = obj["metadata"].get("uid")
        for key, other in list(self.objects.items()):  # garbage collection, at once
            owned = any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences", []))
            if owned or (kind.kind == "Namespace" and key[1] == name):
                del self.objects[key]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Success",
            "details": {"name": name, "kind": kind.plural},
        }

    def stream(self, method: str, raw_path: str, headers) -> tuple[tuple[str, ...], callable]:
        """Check a pods/portforward request as the API server does before it upgrades the connection.

        Returns (the subprotocols spoken for it, the session to run on the WebSocket); an ApiError is answered
        as plain HTTP, before any upgrade, as the real server answers these.
        """
        parts = urlsplit(raw_path)
        namespace, name, sub = STREAM_PATH.match(parts.path).groups()
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append((method, raw_path))
            if method not in ("GET", "POST"):
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on pods/{sub}")
            pod = self._get(self.kind("Pod"), namespace, name)  # 404 for an unknown pod (or namespace)
            if problem := websocket.upgrade_problem(headers):
                raise ApiError(400, "BadRequest", problem)
            if not pod["spec"].get("nodeName"):
                raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
            phase = pod.get("status", {}).get("phase")
            if phase != "Running":
                raise ApiError(
                    400, "BadRequest", f"unable to upgrade connection: pod {name} is not running (phase {phase})"
                )
            uid = pod["metadata"]["uid"]
            try:
                ports = [int(p) for value in query.get("ports", []) for p in value.split(",")]  # repeated or a,b
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid ports {query.get('ports')}") from None
            if not ports or not all(0 < p < 65536 for p in ports):
                raise ApiError(400, "BadRequest", "at least one port between 1 and 65535 is required")
            targets = {p: self.forwards[(namespace, name, p)] for p in ports if (namespace, name, p) in self.forwards}
            return streams.PORTFORWARD_PROTOCOLS, lambda ws: streams.serve_portforward(ws, name, uid, ports, targets)

    def _log(self, namespace: str, pod: str, query: dict) -> str:
        obj = self._get(self.kind("Pod"), namespace, pod)
        container = query.get("container") or obj["spec"]["containers"][0]["name"]
        lines = self.logs.get((namespace, pod, container), "").splitlines()
        tail = int(query.get("tailLines", 0) or 0)
        return "\n".join(lines[-tail:] if tail else lines) + ("\n" if lines else "")

    # ---- "controllers" ---------------------------------------------------------------------------

    def _later(self, delay: float, action) -> None:
        self._timers.append((time.monotonic() + delay, action))

    def _controllers(self) -> None:
        while not self._stopping.wait(0.02):
            with self._lock:
                due = [t for t in self._timers if t[0] <= time.monotonic()]
                self._timers = [t for t in self._timers if t[0] > time.monotonic()]
                for _, action in due:
                    action()

    def _created(self, kind: Kind, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind.kind == "HelmChart" and name in CHART_CRDS:
            self._later(self.crd_delay, lambda: self._install_crds(CHART_CRDS[name]))
        if kind.kind == "HelmChart" and name == "keda":
            self._later(self.crd_delay, lambda: self._install_keda(obj.get("spec", {}).get("targetNamespace", "keda")))
        if kind.kind in ("Deployment", "RayCluster"):
            self._sync_pods(obj)

    def _changed(self, kind: Kind, obj: dict, old: dict) -> None:
        if kind.kind in ("Deployment", "RayCluster") and obj.get("spec") != old.get("spec"):
            self._sync_pods(obj)

    def _install_keda(self, namespace: str) -> None:
        """What the KEDA chart runs: its operator and metrics server (pods ready like any Deployment's), and
        the external metrics APIService, Available (`piml check` looks at all three)."""
        if ("namespaces", "", namespace) not in self.objects:
            self._store(self.kind("Namespace"), {"metadata": {"name": namespace}})
        for name in ("keda-operator", "keda-operator-metrics-apiserver"):
            labels = {"app.kubernetes.io/name": name}
            deployment = self._store(
                self.kind("Deployment"),
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {"containers": [{"name": name, "image": f"ghcr.io/kedacore/{name}"}]},
                        },
                    },
                },
            )
            self._sync_pods(deployment)
        self._store(
            self.kind("APIService"),
            {
                "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
                "spec": {
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "service": {"namespace": namespace, "name": "keda-operator-metrics-apiserver"},
                },
                "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Passed"}]},
            },
        )

    def _install_crds(self, kinds: list[Kind]) -> None:
        for k in kinds:
            crd = {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{k.plural}.{k.group}"},
                "spec": {
                    "group": k.group,
                    "scope": "Namespaced" if k.namespaced else "Cluster",
                    "names": {"kind": k.kind, "plural": k.plural},
                    "versions": [{"name": k.version, "served": True, "storage": True}],
                },
                "status": {
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True"},
                        {"type": "Established", "status": "True"},
                    ]
                },
            }
            key = ("customresourcedefinitions", "", crd["metadata"]["name"])
            self._store(self.kind("CustomResourceDefinition"), crd, self.objects.get(key))
            if k not in self.kinds:
                self.kinds.append(k)
            self.history.append(("established", "CustomResourceDefinition", "", crd["metadata"]["name"]))

    def _pod_templates(self, owner: dict) -> list[tuple[str, dict, int]]:
        """(pod name prefix, pod template, replicas) for a Deployment, or a RayCluster's head."""
        name, spec = owner["metadata"]["name"], owner.get("spec", {})
        if owner["kind"] == "Deployment":
            return [(name, spec.get("template", {}), int(spec.get("replicas", 1)))]
        template = copy.deepcopy(spec.get("headGroupSpec", {}).get("template", {}))
        template.setdefault("metadata", {}).setdefault("labels", {}).update(
            {"ray.io/cluster": name, "ray.io/node-type": "head"}
        )
        return [(f"{name}-head", template, 1)]

    def _sync_pods(self, owner: dict) -> None:
        """Replace the owner's pods by new ones, which become ready after `ready_delay`."""
        pods = self.kind("Pod")
        uid, namespace = owner["metadata"]["uid"], owner["metadata"]["namespace"]
        for key, obj in list(self.objects.items()):
            if key[0] == "pods" and any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences", [])):
                del self.objects[key]
        created = []
        unschedulable = []
        for prefix, template, replicas in self._pod_templates(owner):
            for i in range(replicas):
                spec = copy.deepcopy(template.get("spec", {}))
                node, why = self._schedule(namespace, spec, i)
                if why is None:
                    spec["nodeName"] = node
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{prefix}-{uuid.uuid4().hex[:5]}-{i}",
                        "namespace": namespace,
                        "labels": dict(template.get("metadata", {}).get("labels", {})),
                        "ownerReferences": [
                            {
                                "apiVersion": owner["apiVersion"],
                                "kind": owner["kind"],
                                "name": owner["metadata"]["name"],
                                "uid": uid,
                                "controller": True,
                            }
                        ],
                    },
                    "spec": spec,
                    "status": {"phase": "Pending"},
                }
                created.append(self._store(pods, pod))
                if why is not None:
                    unschedulable.append((created[-1], why))
        self._set_owner_status(owner, ready=0)
        for pod, why in unschedulable:  # as the scheduler leaves it: Pending, PodScheduled False, an event
            pod["status"] = {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}],
            }
            self._event(
                pod,
                "FailedScheduling",
                why
                + f" preemption: 0/{len(self._nodes())} nodes are available: {len(self._nodes())} Preemption is not "
                "helpful for scheduling.",
            )
        self._later(
            self.ready_delay, lambda: self._become_ready(owner["kind"], namespace, owner["metadata"]["name"], uid)
        )

    def _nodes(self) -> list[str]:
        return sorted(n for (p, _, n) in self.objects if p == "nodes")

    def _schedule(self, namespace: str, spec: dict, i: int) -> tuple[str | None, str | None]:
        """(node, None), or (None, why) for a pod the scheduler cannot place: the node its nodeSelector's
        kubernetes.io/hostname names (when that node exists), else round-robin. Nothing of the real fit rules."""
        nodes = self._nodes()
        if not nodes:
            return None, "0/0 nodes are available: no nodes available to schedule pods."
        wanted = (spec.get("nodeSelector") or {}).get(HOSTNAME)
        return (wanted if wanted in nodes else nodes[i % len(nodes)]), None

    def _become_ready(self, kind: str, namespace: str, name: str, uid: str) -> None:
        owner = self.objects.get((self.kind(kind).plural, namespace, name))
        if owner is None or owner["metadata"]["uid"] != uid:
            return
        ready = 0
        for key, pod in self.objects.items():
            if (
                key[0] == "pods"
                and pod["spec"].get("nodeName")
                and any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences", []))
            ):
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {
                            "name": c["name"],
                            "image": c.get("image", ""),
                            "imageID": _image_id(c.get("image", "")),
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": _now()}},
                        }
                        for c in pod["spec"].get("containers", [])
                    ],
                }
                pod["metadata"]["resourceVersion"] = self._next_rv()
                ready += 1
        self._set_owner_status(owner, ready)

    def _set_owner_status(self, owner: dict, ready: int) -> None:
        if owner["kind"] == "Deployment":
            want = int(owner["spec"].get("replicas", 1))
            owner["status"] = {
                "observedGeneration": owner["metadata"].get("generation", 1),
                "replicas": want,
                "updatedReplicas": want,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [{"type": "Available", "status": "True" if ready >= want else "False"}],
            }
        else:
            owner["status"] = {"state": "ready", "readyWorkerReplicas": 0} if ready else {}
        owner["metadata"]["resourceVersion"] = self._next_rv()

    def _event(self, pod: dict, reason: str, message: str) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "name": name, "namespace": namespace, "uid": pod["metadata"]["uid"]},
            "reason": reason,
            "message": message,
            "type": "Warning",
            "count": 3,
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
        }
        self._store(self.kind("Event"), event)


def _image_id(image: str) -> str:
    """A stable made-up digest: real container statuses carry the pulled image's ID."""
    return f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _parse(body: bytes) -> dict:
    text = body.decode() if body else "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text) or {}


def _merge(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


def _handler(api: FakeKubeAPI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):  # quiet: tests read api.requests instead
            pass

        def _serve(self):
            if STREAM_PATH.match(urlsplit(self.path).path):
                return self._stream()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                code, result = api.handle(self.command, self.path, body, self.headers.get("Content-Type", ""))
            except ApiError as exc:
                code, result = exc.code, exc.status()
            except Exception as exc:  # noqa: BLE001 - a stand-in bug: say so as a 500, do not hang the client
                code, result = 500, ApiError(500, "InternalError", f"stand-in error: {exc!r}").status()
            self._reply(code, result)

        def _stream(self):
            """pods/portforward: checks answered as HTTP, then the upgrade and the session."""
            try:
                protocols, session = api.stream(self.command, self.path, self.headers)
                if (protocol := websocket.choose_protocol(self.headers, protocols)) is None:
                    raise ApiError(
                        400, "BadRequest", f"unable to upgrade: the stand-in speaks only {', '.join(protocols)}"
                    )
            except Exception as exc:  # noqa: BLE001 - ApiError as the API answers it; anything else is a stand-in bug
                error = exc if isinstance(exc, ApiError) else ApiError(500, "InternalError", f"stand-in error: {exc!r}")
                self.close_connection = True  # a refused upgrade ends the connection (the client drops it anyway)
                return self._reply(error.code, error.status())
            ws = websocket.accept(self, protocol)
            with api._lock:
                api._streams.add(ws)
            try:
                session(ws)
            except OSError:
                pass  # the client went away mid-session
            finally:
                ws.abort()
                with api._lock:
                    api._streams.discard(ws)

        def _reply(self, code: int, result) -> None:
            if isinstance(result, str):
                data, ctype = result.encode(), "text/plain"
            else:
                data, ctype = json.dumps(result).encode(), "application/json"
            self.send_response(code)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
