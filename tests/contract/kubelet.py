"""A kubelet for the contract tests: it runs a rendered pod's containers as the real kubelet would, but as
processes on this machine (each pod in its own network, mount and UTS namespaces; see netns.py), and runs the
pod's probes exactly as specified. This is a stand-in for the kubelet and the container runtime only: what runs
inside is the real program (images.py), with the command, args and env that piml rendered.

What it does as Kubernetes does (k8s.io/kubernetes pkg/kubelet, pkg/probe, third_party/forked/golang/expansion):
- command/args: `command` replaces the image's entrypoint, `args` its default command; `$(VAR)` expands to the
  container's env, `$$(VAR)` is a literal `$(VAR)`, an undefined `$(VAR)` stays as written;
- env: in order, each `value` may refer to earlier variables; `secretKeyRef`, `configMapKeyRef` and `fieldRef`
  resolved from the rendered objects and the pod; the Service links (`{SVC}_SERVICE_HOST`, `{SVC}_PORT_...`) of
  every Service in the namespace (`enableServiceLinks` defaults to true);
- volumes: emptyDir and PVC as directories (a PVC's outlives the pod, keyed by claim), configMap/secret files
  (items and defaultMode), bound at the container's mountPath (read-only when asked);
- init containers one after another to completion, then the containers, then postStart hooks;
- probes: httpGet from the node (Host `<pod IP>:<port>` unless the probe sets one, `User-Agent: kube-probe/1.36`,
  redirects to the same host followed, 200-399 passes), tcpSocket, exec (inside the container, its env).

Faked: images (mirrors, see images.py), users (every process runs as root), resource limits (not enforced),
restarts (a container that exits is reported, not restarted), DNS (see netns.py), Service virtual IPs (a
Service name resolves to its one backing pod's address; ports must equal target ports, checked).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.contract.images import Mirror
from tests.contract.netns import NODE_IP, SUBNET, Network

KUBE_VERSION = "1.36"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables replaced, $$ an escaped $, the rest as written."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(one, text)


def service_links(services: list[dict], addresses: dict[str, str]) -> dict[str, str]:
    """The Docker-link style variables the kubelet puts in every pod of the namespace."""
    env = {}
    for svc in services:
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ip = addresses.get(svc["metadata"]["name"], f"{SUBNET}.254")
        ports = svc["spec"].get("ports", [])
        if not ports:
            continue
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        first = ports[0]
        proto = first.get("protocol", "TCP").lower()
        env[f"{name}_PORT"] = f"{proto}://{ip}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port['port']}_{proto.upper()}"
            env[prefix] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


@dataclass
class Container:
    pod: Pod
    spec: dict
    mirror: Mirror
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    def port(self, port) -> int:
        """A probe's or Service's port: a number, or the name of one of the container's ports."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise KeyError(f"{self.pod.name}/{self.name} has no port named {port!r}")

    def argv(self) -> list[str]:
        command = [expand(c, self.env) for c in self.spec.get("command", [])]
        args = [expand(a, self.env) for a in self.spec.get("args", [])]
        if command:
            return command + args
        return [*self.mirror.entrypoint, *(args or self.mirror.cmd)]

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict
    spec: dict
    netns: str = ""
    ip: str = ""
    node: str = ""
    workdir: Path = Path()
    mounts: dict[str, Path] = field(default_factory=dict)  # volume name -> directory
    containers: list[Container] = field(default_factory=list)
    init_results: list[tuple[str, int]] = field(default_factory=list)

    def container(self, name: str | None = None) -> Container:
        if name is None:
            return self.containers[0]
        return next(c for c in self.containers if c.name == name)


class Kubelet:
    """Runs pods of one rendered platform. `objects` are the rendered objects, Secrets with their values."""

    def __init__(
        self, objects: list[dict], mirrors: dict[str, Mirror], workdir: Path, network: Network, node_name: str = "pi1"
    ):
        self.objects = objects
        self.mirrors = mirrors
        self.workdir = workdir
        self.network = network
        self.node_name = node_name
        self.pods: list[Pod] = []
        self.claims: dict[str, Path] = {}
        self.made_dirs: list[Path] = []
        self.service_ip: dict[str, str] = {}  # Service name -> the address its name resolves to

    # --- what the rendered objects say --------------------------------------------------------------------
    def find(self, kind: str, name: str, namespace: str | None = None) -> dict:
        for obj in self.objects:
            meta = obj["metadata"]
            if (
                obj["kind"] == kind
                and meta["name"] == name
                and (namespace is None or meta.get("namespace") == namespace)
            ):
                return obj
        raise KeyError(f"no {kind} {name} in the rendered objects")

    def services(self, namespace: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == "Service" and o["metadata"].get("namespace") == namespace]

    def secret_value(self, name: str, key: str, namespace: str) -> str:
        secret = self.find("Secret", name, namespace)
        if key in secret.get("stringData", {}):
            return str(secret["stringData"][key])
        if key in secret.get("data", {}):
            return base64.b64decode(secret["data"][key]).decode()
        raise KeyError(f"Secret {name} has no key {key}: the pod would not start (CreateContainerConfigError)")

    def config_value(self, name: str, key: str, namespace: str) -> str:
        return str(self.find("ConfigMap", name, namespace)["data"][key])

    def hosts(self, pod_name: str = "", pod_ip: str = "", namespace: str = "") -> str:
        """A pod's /etc/hosts: what its resolver would answer. The bare Service name only for Services in the
        pod's own namespace (the search path starts with <namespace>.svc.cluster.local), the others by
        name.ns and longer."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if pod_ip:
            lines.append(f"{pod_ip}\t{pod_name}")
        for svc_name, ip in self.service_ip.items():
            svc = next(o for o in self.objects if o["kind"] == "Service" and o["metadata"]["name"] == svc_name)
            ns = svc["metadata"].get("namespace", "default")
            forms = [f"{svc_name}.{ns}", f"{svc_name}.{ns}.svc", f"{svc_name}.{ns}.svc.cluster.local"]
            if ns == namespace:
                forms.insert(0, svc_name)
            lines.append(f"{ip}\t{' '.join(forms)}")
        return "\n".join(lines) + "\n"

    def resolve(self, name: str, namespace: str = "") -> str:
        """What a Service name resolves to in the /etc/hosts of a pod in `namespace`."""
        for line in self.hosts(namespace=namespace).splitlines():
            ip, _, names = line.partition("\t")
            if name in names.split():
                return ip
        raise KeyError(f"{name} resolves to nothing (no such Service, or no pod behind it yet)")

    # --- running pods -------------------------------------------------------------------------------------
    def start(self, name: str, namespace: str, labels: dict, spec: dict, extra_env: dict | None = None) -> Pod:
        pod = Pod(name, namespace, dict(labels), spec, node=self.node_name)
        pod.netns, pod.ip = self.network.add(self.hosts())
        pod.workdir = self.workdir / name
        pod.workdir.mkdir(parents=True, exist_ok=True)
        self.pods.append(pod)
        for svc in self.services(namespace):  # Services whose selector picks this pod now resolve to it
            selector = svc["spec"].get("selector") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                self._same_ports(svc, spec)
                self.service_ip[svc["metadata"]["name"]] = pod.ip
        self.refresh_hosts()
        self._volumes(pod)
        for spec_c in spec.get("initContainers", []):
            container = self._container(pod, spec_c, extra_env)
            code = self._run(container, wait=True)
            pod.init_results.append((container.name, code))
            if code != 0:
                raise RuntimeError(f"init container {name}/{container.name} exited {code}:\n{container.tail()}")
        for spec_c in spec["containers"]:
            container = self._container(pod, spec_c, extra_env)
            pod.containers.append(container)
            self._run(container, wait=False)
            hook = spec_c.get("lifecycle", {}).get("postStart", {}).get("exec")
            if hook:
                result = self.exec(pod, hook["command"], container.name, timeout=180)
                if result.returncode:
                    raise RuntimeError(
                        f"postStart of {name}/{container.name} failed: {result.stdout[-1000:]}{result.stderr[-1000:]}"
                    )
        return pod

    def refresh_hosts(self) -> None:
        for pod in self.pods:
            self.network.set_hosts(pod.netns, self.hosts(pod.name, pod.ip, pod.namespace))

    @staticmethod
    def _same_ports(svc: dict, spec: dict) -> None:
        """A name resolves straight to the pod here (no ClusterIP), so a Service port must be its target port."""
        named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if p.get("name")}
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            target = named.get(target, target)
            if str(target) != str(port["port"]):
                raise RuntimeError(
                    f"Service {svc['metadata']['name']} maps port {port['port']} to {target}: the contract "
                    "kubelet resolves names straight to pods and cannot carry that (see README.md)"
                )

    def _volumes(self, pod: Pod) -> None:
        for volume in pod.spec.get("volumes", []):
            vname = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                path = self.claims.setdefault(claim, self.workdir / "claims" / claim)
            else:
                path = pod.workdir / "volumes" / vname
            path.mkdir(parents=True, exist_ok=True)
            source = volume.get("configMap") or volume.get("secret")
            if source is not None:
                ref = source.get("name") or source.get("secretName")
                if "configMap" in volume:
                    data = {k: str(v) for k, v in self.find("ConfigMap", ref, pod.namespace).get("data", {}).items()}
                else:
                    secret = self.find("Secret", ref, pod.namespace)
                    data = {
                        k: self.secret_value(ref, k, pod.namespace)
                        for k in (*secret.get("stringData", {}), *secret.get("data", {}))
                    }
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            pod.mounts[vname] = path

    def preview(self, name: str, namespace: str, labels: dict, spec: dict) -> Container:
        """A container as it would be started (its env resolved), without starting anything."""
        return self._container(
            Pod(name, namespace, dict(labels), spec, node=self.node_name), spec["containers"][0], None
        )

    def _container(self, pod: Pod, spec: dict, extra_env: dict | None) -> Container:
        image = spec["image"]
        if image not in self.mirrors:
            raise RuntimeError(f"no mirror of image {image} (tests/contract/images.py): this container cannot run here")
        mirror = self.mirrors[image]
        env = {"PATH": mirror.path(), "HOSTNAME": pod.name, "HOME": mirror.home, **mirror.env}
        env.update(service_links(self.services(pod.namespace), self.service_ip))
        env.update({"KUBERNETES_SERVICE_HOST": f"{SUBNET}.253", "KUBERNETES_SERVICE_PORT": "443"})
        for item in spec.get("env", []):
            if "valueFrom" not in item:  # a missing value is the empty string
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = self.secret_value(ref["name"], ref["key"], pod.namespace)
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[item["name"]] = self.config_value(ref["name"], ref["key"], pod.namespace)
            elif "fieldRef" in source:
                env[item["name"]] = self._field(pod, source["fieldRef"]["fieldPath"])
            else:
                raise RuntimeError(f"{pod.name}/{spec['name']}: env {item['name']}: {source} is not handled here")
        env.update(extra_env or {})
        log = pod.workdir / f"{spec['name']}.log"
        return Container(pod, spec, mirror, env, log)

    def _field(self, pod: Pod, path: str) -> str:
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "spec.nodeName": pod.node,
            "status.podIP": pod.ip,
            "status.hostIP": NODE_IP,
        }
        if path in fields:
            return fields[path]
        label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if label:
            return pod.labels.get(label.group(1), "")
        raise RuntimeError(f"fieldRef {path} is not handled here")

    def _wrapper(self, pod: Pod, spec: dict, network: bool = True) -> list[str]:
        """ip netns exec + new mount and UTS namespaces: the pod's hostname and volumes, then the program.

        `network` False keeps the machine's network: init containers that download packages (a pod's namespace
        here has no route to the package registries; a real pod reaches them through the node)."""
        steps = [f"hostname {shlex.quote(pod.name)}"]
        for mount in spec.get("volumeMounts", []):
            source = pod.mounts[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            target = Path(mount["mountPath"])
            if not target.exists():
                target.mkdir(parents=True)
                self.made_dirs.append(target)
            steps.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
            if mount.get("readOnly"):
                steps.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        mirror = self.mirrors.get(spec.get("image", ""))
        for private in mirror.private_dirs if mirror else ():
            own = pod.workdir / "image" / spec["name"] / private.strip("/").replace("/", "_")
            own.mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(str(own))} {shlex.quote(private)}")
        script = "; ".join(steps) + '; cd "$PIML_WORKDIR" && exec "$@"'
        enter = ["ip", "netns", "exec", pod.netns] if network else []
        return [*enter, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-ec", script, "sh"]

    def _run(self, container: Container, wait: bool) -> int:
        env = {**container.env, "PIML_WORKDIR": container.mirror.workdir}
        # An init container that installs packages reaches the registry through this machine's network (a pod
        # namespace here has no route out; a real pod's goes through the node). Others run in the pod's network.
        installs = wait and Path(container.argv()[0]).name in ("pip", "pip3")
        argv = self._wrapper(container.pod, container.spec, network=not installs) + container.argv()
        with open(container.log, "ab") as out:
            container.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        if wait:
            try:
                return container.proc.wait(timeout=300)  # a real init container may wait forever; a test may not
            except subprocess.TimeoutExpired:
                self._kill(container.proc)
                return -1
        return 0

    def exec(
        self, pod: Pod, argv: list[str], container: str | None = None, timeout: float = 30, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """`kubectl exec` / an exec probe: the argv inside the container, with its env (no $(VAR) expansion)."""
        target = pod.container(container)
        full_env = {**target.env, **(env or {}), "PIML_WORKDIR": target.mirror.workdir}
        argv = self._wrapper(pod, target.spec) + list(argv)
        proc = subprocess.Popen(
            argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(argv, -1, out, err + f"\n(timed out after {timeout} s)")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    # --- probes -------------------------------------------------------------------------------------------
    def probe_once(self, container: Container, probe: dict) -> tuple[bool, str]:
        timeout = probe.get("timeoutSeconds", 1)
        pod = container.pod
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = container.port(get["port"])
            host = get.get("host") or pod.ip
            headers = {"User-Agent": f"kube-probe/{KUBE_VERSION}", "Accept": "*/*", "Host": f"{host}:{port}"}
            for h in get.get("httpHeaders", []):
                headers[h["name"] if h["name"].lower() != "host" else "Host"] = h["value"]
            return http_get(host, port, get.get("path", "/"), headers, timeout)
        if "tcpSocket" in probe:
            port = container.port(probe["tcpSocket"]["port"])
            try:
                socket.create_connection((pod.ip, port), timeout=timeout).close()
                return True, "connected"
            except OSError as error:
                return False, str(error)
        if "exec" in probe:
            result = self.exec(pod, probe["exec"]["command"], container.name, timeout=timeout)
            return result.returncode == 0, (result.stdout + result.stderr)[-300:]
        raise RuntimeError(f"probe kind not handled: {probe}")

    def wait_probe(self, container: Container, kind: str, budget: float | None = None) -> float:
        """Run the container's `kind` probe (startupProbe, readinessProbe, livenessProbe) until it passes.

        Startup and liveness probes must pass within what the kubelet allows before it restarts the container:
        initialDelaySeconds + failureThreshold x periodSeconds. Readiness has no such limit; `budget` bounds it.
        Returns the seconds it took; raises AssertionError with the last answer and the log tail otherwise."""
        probe = container.spec.get(kind)
        if not probe:
            raise KeyError(f"{container.pod.name}/{container.name} has no {kind}")
        allowed = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get(
            "periodSeconds", 10
        )
        if kind == "readinessProbe":
            allowed = budget or 120
        start = time.monotonic()
        time.sleep(probe.get("initialDelaySeconds", 0))
        last = ""
        while time.monotonic() - start < allowed:
            if container.proc is not None and container.proc.poll() is not None:
                raise AssertionError(
                    f"{container.pod.name}/{container.name} exited {container.proc.returncode} before its "
                    f"{kind} passed:\n{container.tail()}"
                )
            ok, last = self.probe_once(container, probe)
            if ok:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(
            f"{container.pod.name}/{container.name}: {kind} did not pass within {allowed} s; last: {last}\n"
            f"{container.tail()}"
        )

    # --- the end ------------------------------------------------------------------------------------------
    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def delete(self, pod: Pod) -> None:
        """The pod is gone (deleted, its node lost): its processes end and its Services stop resolving to it."""
        self.stop(pod)
        for name, ip in list(self.service_ip.items()):
            if ip == pod.ip:
                del self.service_ip[name]
        self.refresh_hosts()

    def stop(self, pod: Pod) -> None:
        for container in pod.containers:
            if container.proc is not None:
                self._kill(container.proc)
        # anything else still in the pod's namespace (daemons a program forked off)
        listing = subprocess.run(["ip", "netns", "pids", pod.netns], capture_output=True, text=True, timeout=30).stdout
        for pid in listing.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def close(self) -> None:
        for pod in self.pods:
            self.stop(pod)
        for path in reversed(self.made_dirs):
            try:
                path.rmdir()
            except OSError:
                pass


def http_get(
    host: str,
    port: int,
    path: str,
    headers: dict,
    timeout: float,
    method: str = "GET",
    body: bytes | None = None,
    redirects: int = 10,
    limit: int = 300,
) -> tuple[bool, str]:
    """One HTTP request as Go's client in the kubelet makes it; 200-399 passes, same-host redirects followed."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read(max(limit, 2000)).decode(errors="replace")
        conn.close()
    except OSError as error:
        return False, f"{type(error).__name__}: {error}"
    if response.status in (301, 302, 303, 307, 308) and redirects > 0:
        location = urlsplit(response.getheader("Location", ""))
        if location.hostname in (None, "", host):
            target = location.path or "/"
            if location.query:
                target += "?" + location.query
            return http_get(host, location.port or port, target, headers, timeout, redirects=redirects - 1, limit=limit)
        return True, f"redirect to another host: {response.status}"
    return 200 <= response.status < 400, f"{response.status} {text[:limit]}"
