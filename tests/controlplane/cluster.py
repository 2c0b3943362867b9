"""Start and stop a real Kubernetes control plane (kine + kube-apiserver + kube-controller-manager +
kube-scheduler, built by build.py) on loopback, plus the node stand-in (nodes.py), all detached.

Layout of DIR (everything here is made by `up` and removed by `down`):
    DIR/kubeconfig          admin kubeconfig, cluster/context/user named `default` as k3s's k3s.yaml
    DIR/controlplane.json   ports, pids, paths (what `down` and nodes.py read)
    DIR/tls/                CAs, serving and client certificates, service-account key
    DIR/kubeconfigs/        one kubeconfig per component
    DIR/db/                 kine's SQLite database
    DIR/logs/               one log per process (kept by `down --keep-logs` and after a failed `up`)
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.ports import free_port

HERE = Path(__file__).resolve().parent
STATE = "controlplane.json"
MADE = (
    "kubeconfig",
    STATE,
    "tls",
    "kubeconfigs",
    "db",
    "logs",
    "run",
    "kubelet-streams.port",
    "forwards.json",
    "execs.json",
)

SERVICE_CIDR = "10.43.0.0/16"  # k3s defaults
CLUSTER_CIDR = "10.42.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:admin"]
- level: None
"""
START_ORDER = (
    "kine",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet-streams",
    "nodes",
    "local-path-provisioner",
    "helm-controller",
    "kuberay-operator",
)


class UpError(Exception):
    pass


class BadInput(UpError):
    """A wrong argument: exit 2, as piml's conventions want."""


NODE_ARCHES = ("arm64", "amd64")  # what --node takes (piml's architectures); --arch also takes arm
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1123 label: a Node name kubelets accept
MEMORY_UNITS_KI = {"Ki": 1, "Mi": 1024, "Gi": 1024**2, "Ti": 1024**3}
EVICTION_MEMORY_KI = 100 * 1024  # nodes.py: allocatable = capacity - 100Mi
MAX_NODES = 155  # InternalIP 127.0.0.(100+i)


def _memory_ki(option: str, q: str) -> int:
    m = re.fullmatch(r"([1-9]\d*)(Ki|Mi|Gi|Ti)", q)
    if not m:
        raise BadInput(f"{option} {q!r}: write a memory quantity such as 8Gi or 4096Mi")
    ki = int(m.group(1)) * MEMORY_UNITS_KI[m.group(2)]
    if ki <= EVICTION_MEMORY_KI:
        raise BadInput(f"{option} {q!r}: a node needs more than the kubelet's 100Mi eviction threshold")
    return ki


def node_list(nodes: int | None, node_memory: str, arch: str, specs: list[str] | None) -> list[dict]:
    """The stand-in nodes, in order: [{name, memory, arch, ip}]. Either `nodes` (node-1..N, all with `node_memory`
    and `arch`) or `specs` (--node NAME[:MEMORY[:ARCH]]; a field left out is `node_memory` / `arch`). The i-th
    node (1-based) has the InternalIP 127.0.0.(100+i); the first is the one labelled control-plane."""
    _memory_ki("--node-memory", node_memory)
    if arch not in ("arm64", "amd64", "arm"):
        raise BadInput(f"--arch {arch}: use arm64, amd64 or arm")
    if specs and nodes is not None:
        raise BadInput("--nodes and --node exclude each other: give the count, or name every node with --node")
    count = len(specs) if specs else 3 if nodes is None else nodes
    if not 1 <= count <= MAX_NODES:
        given = f"--node given {count} times" if specs else f"--nodes {count}"
        raise BadInput(f"{given}: give 1 to {MAX_NODES} nodes (their InternalIPs are 127.0.0.101 and up)")
    if not specs:
        return [
            {"name": f"node-{i}", "memory": node_memory, "arch": arch, "ip": f"127.0.0.{100 + i}"}
            for i in range(1, count + 1)
        ]
    out: list[dict] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) > 3:
            raise BadInput(f"--node {spec!r}: write NAME[:MEMORY[:ARCH]], e.g. pi1:8Gi:arm64")
        name, memory, node_arch = parts + [""] * (3 - len(parts))
        if not DNS_LABEL.fullmatch(name):
            raise BadInput(
                f"--node {spec!r}: the name {name!r} must be a DNS-1123 label (lower-case letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters)"
            )
        if any(n["name"] == name for n in out):
            raise BadInput(f"--node {spec!r}: node {name} is given twice")
        memory = memory or node_memory
        _memory_ki(f"--node {spec!r}: memory", memory)
        node_arch = node_arch or arch
        if node_arch not in NODE_ARCHES:
            raise BadInput(f"--node {spec!r}: architecture {node_arch!r} is unknown: use {' or '.join(NODE_ARCHES)}")
        out.append({"name": name, "memory": memory, "arch": node_arch, "ip": f"127.0.0.{100 + len(out) + 1}"})
    return out


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> None:
    """A kubeconfig shaped as k3s's /etc/rancher/k3s/k3s.yaml: cluster, context and user all named `default`."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {_b64(ca)}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {_b64(cert)}
    client-key-data: {_b64(key)}
"""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.rename(path)


def _save_state(d: Path, state: dict) -> None:
    tmp = d / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.rename(d / STATE)


def load_state(d: Path) -> dict | None:
    try:
        return json.loads((d / STATE).read_text())
    except (OSError, ValueError):
        return None


def _proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_ours(pid: int, start_time: str | None) -> bool:
    """The pid still names the process we started (not a reused pid): same start time in /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return start_time is None or fields[19] == start_time
    except (OSError, IndexError):
        return False


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _ssl_ctx(paths: dict, client: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=paths["server-ca"])
    if client:
        ctx.load_cert_chain(paths["client-admin"], paths["client-admin-key"])
    return ctx


def _get(url: str, ctx: ssl.SSLContext, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as e:
        return 0, str(e)


class Up:
    def __init__(self, d: Path, nodes: list[dict], bin_dir: Path, streams_bin: Path, addons: dict | None = None):
        self.d, self.bin = d, bin_dir
        self.addons = addons or {}  # addons.start's keyword arguments: which add-ons to run
        self.state: dict = {
            "dir": str(d),
            "bin": str(bin_dir),
            "kubelet_streams_bin": str(streams_bin),  # build.kubelet_streams(): its own module and cache key
            "nodes": nodes,  # node_list(): [{name, memory, arch, ip}], the first labelled control-plane
            "procs": {},
        }

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.d / "logs" / f"{name}.log", "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.d,
            env=env or _clean_env(),
            start_new_session=True,
        )
        log.close()
        self.state["procs"][name] = {"pid": p.pid, "start": _start_time(p.pid), "argv0": argv[0]}
        _save_state(self.d, self.state)  # recorded at once, so `down` can stop it whatever happens next
        return p

    def wait(self, what: str, p: subprocess.Popen | None, check, timeout: float, log: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if p is not None and p.poll() is not None:
                raise UpError(
                    f"{what} exited with status {p.returncode} while starting: "
                    f"{_last_line(self.d / 'logs' / log)} (log: {self.d / 'logs' / log})"
                )
            ok, last = check()
            if ok:
                return
            time.sleep(0.3)
        raise UpError(f"{what} not ready after {timeout:.0f} s ({last[:160]}); log: {self.d / 'logs' / log}")

    def run(self) -> dict:
        from . import certs

        d, b = self.d, self.bin
        for sub in ("logs", "db", "kubeconfigs", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        node_names = [n["name"] for n in self.state["nodes"]]
        paths = {k: str(v) for k, v in certs.make_all(d / "tls", node_names).items()}
        self.state["tls"] = paths
        ports = {n: free_port() for n in ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}
        self.state["ports"] = ports
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        self.state["server"] = server
        write_kubeconfig(
            d / "kubeconfig",
            server,
            Path(paths["server-ca"]),
            Path(paths["client-admin"]),
            Path(paths["client-admin-key"]),
        )
        for comp, cert in (("kube-controller-manager", "client-controller"), ("kube-scheduler", "client-scheduler")):
            write_kubeconfig(
                d / "kubeconfigs" / f"{comp}.yaml",
                server,
                Path(paths["server-ca"]),
                Path(paths[cert]),
                Path(paths[cert + "-key"]),
            )
        # An audit log of what the admin user (piml, the tests, kubectl with DIR/kubeconfig) asked, in order: the
        # tests read it to check the order piml applies and deletes in. Controllers and nodes are not logged.
        (d / "run" / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.state["audit_log"] = str(d / "logs" / "audit.log")
        _save_state(d, self.state)

        # kine over SQLite, as k3s's default datastore (same endpoint options as k3s).
        kine = self.spawn(
            "kine",
            [
                str(b / "kine"),
                f"--listen-address=127.0.0.1:{ports['kine']}",
                f"--endpoint=sqlite://{d}/db/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate",
                "--metrics-bind-address=0",
            ],
        )
        self.wait("kine", kine, lambda: (_port_open(ports["kine"]), "port closed"), 20, "kine.log")

        # kube-apiserver with k3s's flags where they apply.
        api = self.spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ports['kine']}",
                "--storage-backend=etcd3",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['kube-apiserver']}",
                f"--cert-dir={d}/tls/apiserver",
                f"--tls-cert-file={paths['serving-kube-apiserver']}",
                f"--tls-private-key-file={paths['serving-kube-apiserver-key']}",
                f"--client-ca-file={paths['client-ca']}",
                "--anonymous-auth=false",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-32767",
                f"--service-account-issuer={SA_ISSUER}",
                f"--api-audiences={SA_ISSUER},k3s",
                f"--service-account-key-file={paths['service-key']}",
                f"--service-account-signing-key-file={paths['service-key']}",
                f"--kubelet-client-certificate={paths['client-kube-apiserver']}",
                f"--kubelet-client-key={paths['client-kube-apiserver-key']}",
                f"--kubelet-certificate-authority={paths['server-ca']}",  # k3s: server-ca.crt
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                f"--requestheader-client-ca-file={paths['request-header-ca']}",
                "--requestheader-allowed-names=system:auth-proxy",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={paths['client-auth-proxy']}",
                f"--proxy-client-key-file={paths['client-auth-proxy-key']}",
                "--endpoint-reconciler-type=none",  # it would publish 127.0.0.1, which Endpoints refuse
                f"--audit-policy-file={d}/run/audit-policy.yaml",
                f"--audit-log-path={d}/logs/audit.log",
                "--audit-log-mode=blocking",  # written before the answer: a test reads it right after
                "--profiling=false",
            ],
        )
        ctx = _ssl_ctx(paths)
        self.wait("kube-apiserver", api, lambda: _ok(_get(server + "/readyz", ctx)), 60, "kube-apiserver.log")

        kcm = self.spawn(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={d}/kubeconfigs/kube-controller-manager.yaml",
                f"--authentication-kubeconfig={d}/kubeconfigs/kube-controller-manager.yaml",
                f"--authorization-kubeconfig={d}/kubeconfigs/kube-controller-manager.yaml",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-controller-manager']}",
                f"--cert-dir={d}/tls/kube-controller-manager",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--root-ca-file={paths['server-ca']}",
                f"--service-account-private-key-file={paths['service-key']}",
                "--use-service-account-credentials=true",
                "--configure-cloud-routes=false",
                f"--cluster-signing-kube-apiserver-client-cert-file={paths['client-ca']}",
                f"--cluster-signing-kube-apiserver-client-key-file={paths['client-ca-key']}",
                f"--cluster-signing-kubelet-client-cert-file={paths['client-ca']}",
                f"--cluster-signing-kubelet-client-key-file={paths['client-ca-key']}",
                f"--cluster-signing-kubelet-serving-cert-file={paths['server-ca']}",
                f"--cluster-signing-kubelet-serving-key-file={paths['server-ca-key']}",
                f"--cluster-signing-legacy-unknown-cert-file={paths['server-ca']}",
                f"--cluster-signing-legacy-unknown-key-file={paths['server-ca-key']}",
                "--controllers=*,tokencleaner,-service,-route,-cloud-node-lifecycle",  # as k3s
                "--profiling=false",
            ],
        )
        sch = self.spawn(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={d}/kubeconfigs/kube-scheduler.yaml",
                f"--authentication-kubeconfig={d}/kubeconfigs/kube-scheduler.yaml",
                f"--authorization-kubeconfig={d}/kubeconfigs/kube-scheduler.yaml",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-scheduler']}",
                f"--cert-dir={d}/tls/kube-scheduler",
                "--profiling=false",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed into --cert-dir
        for name, p in (("kube-controller-manager", kcm), ("kube-scheduler", sch)):
            url = f"https://127.0.0.1:{ports[name]}/healthz"
            self.wait(name, p, lambda url=url: _ok(_get(url, insecure)), 60, f"{name}.log")
        # The controllers run: the service-account controller has made `default` in namespace default.
        self.wait(
            "kube-controller-manager (default ServiceAccount)",
            kcm,
            lambda: _ok(_get(server + "/api/v1/namespaces/default/serviceaccounts/default", ctx)),
            60,
            "kube-controller-manager.log",
        )

        # The kubelets' port-forward and exec (modules/kubelet-streams): one server for every stand-in node, which
        # each node's kubelet API (kubelet_api.py) passes /portForward/ and /exec/ through to; DIR/forwards.json
        # says what process stands behind a pod's port, DIR/execs.json what env a command exec'd in a pod gets.
        port_file = d / "kubelet-streams.port"
        port_file.unlink(missing_ok=True)
        argv = [
            self.state["kubelet_streams_bin"],
            "--forwards",
            str(d / "forwards.json"),
            "--execs",
            str(d / "execs.json"),
            "--port-file",
            str(port_file),
        ]
        streams = self.spawn("kubelet-streams", argv)
        self.wait("kubelet-streams", streams, lambda: (port_file.exists(), "no port yet"), 30, "kubelet-streams.log")
        self.state["kubelet_streams"] = f"127.0.0.1:{port_file.read_text().strip()}"
        _save_state(d, self.state)

        nodes = self.spawn(
            "nodes", [sys.executable, str(HERE / "nodes.py"), str(d)], env={**_clean_env(), "PYTHONUNBUFFERED": "1"}
        )
        self.wait(
            f"node stand-in ({len(node_names)} Ready nodes)",
            nodes,
            lambda: _nodes_ready(server, ctx, node_names),
            60,
            "nodes.log",
        )
        from . import addons

        addons.start(self, **self.addons)  # k3s's helm-controller, the KubeRay operator (addons.py)
        self.state["up_at"] = time.time()
        _save_state(d, self.state)
        return self.state


def _clean_env() -> dict:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _ok(resp: tuple[int, str]) -> tuple[bool, str]:
    code, body = resp
    return code == 200, f"HTTP {code}: {body.strip().splitlines()[-1] if body.strip() else ''}"


def _nodes_ready(server: str, ctx, names: list[str]) -> tuple[bool, str]:
    """Every node of `names` Ready, and the first labelled control-plane (nodes.py label_control_plane)."""
    code, body = _get(server + "/api/v1/nodes", ctx)
    if code != 200:
        return False, f"HTTP {code}"
    items = {n["metadata"]["name"]: n for n in json.loads(body).get("items", [])}
    ready = [
        name
        for name in names
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (items.get(name, {}).get("status") or {}).get("conditions") or []
        )
    ]
    first = items.get(names[0], {}).get("metadata", {})
    labelled = (first.get("labels") or {}).get("node-role.kubernetes.io/control-plane") == "true"
    return (
        len(ready) == len(names) and labelled,
        f"{len(ready)}/{len(names)} nodes Ready, {names[0]} control-plane label: {labelled}",
    )


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def up(
    d: Path,
    nodes: int | None = None,
    node_memory: str = "8Gi",
    arch: str = "arm64",
    log=print,
    helm_controller: bool = True,
    kuberay: bool = True,
    local_path_storage: bool = True,
    traefik_crds: bool = True,
    node: list[str] | None = None,
) -> dict:
    """Start a control plane from `d`. Nodes: `nodes` (default 3) named node-1..N, each with `node_memory` and
    `arch`; or `node`, the --node specs NAME[:MEMORY[:ARCH]] (exclusive with `nodes`). See node_list."""
    from . import build

    node_specs = node_list(nodes, node_memory, arch, node)
    d = d.resolve()
    st = load_state(d)
    if st and any(_is_ours(p["pid"], p.get("start")) for p in st.get("procs", {}).values()):
        raise UpError(f"a control plane is already running from {d}; run `scripts/control-plane down {d}` first")
    if st:
        _remove_made(d, keep_logs=False)
    d.mkdir(parents=True, exist_ok=True)
    try:
        bin_dir = build.build(log=log)
        streams_bin = build.kubelet_streams(log=log)
    except build.BuildError as e:
        raise UpError(str(e)) from None
    for attempt in (1, 2):
        chosen = {
            "helm_controller": helm_controller,
            "kuberay": kuberay,
            "local_path_storage": local_path_storage,
            "traefik_crds": traefik_crds,
        }
        runner = Up(d, node_specs, bin_dir, streams_bin, chosen)
        try:
            return runner.run()
        except UpError as e:
            stop(d)
            _remove_made(d, keep_logs=True)
            # The free ports are chosen before the processes bind them: another program may take one in between.
            if attempt == 1 and "address already in use" in str(e):
                log(f"{e}; trying again with other ports")
                shutil.rmtree(d / "logs", ignore_errors=True)
                continue
            raise
        except BaseException:
            stop(d)
            _remove_made(d, keep_logs=True)
            raise
    raise AssertionError("unreachable")


def stop(d: Path, timeout: float = 10) -> list[str]:
    """Stop every process recorded in DIR, the last started first (the datastore outlives the apiserver, which
    outlives its clients): SIGTERM to its process group, SIGKILL after `timeout` s. Returns the names killed."""
    st = load_state(d)
    if not st:
        return []
    order = {n: i for i, n in enumerate(START_ORDER)}
    procs = sorted(st.get("procs", {}).items(), key=lambda np: -order.get(np[0], 0))
    killed = []
    for name, p in procs:
        pid, start = p["pid"], p.get("start")
        if not (_proc_alive(pid) and _is_ours(pid, start)):
            continue
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, start, timeout):
            _signal_group(pid, signal.SIGKILL)
            killed.append(name)
            _wait_gone(pid, start, 5)
    return killed


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each runs in its own session: its whole process group
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int, start: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if not (_proc_alive(pid) and _is_ours(pid, start)):
            return True
        time.sleep(0.05)
    return False


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _remove_made(d: Path, keep_logs: bool) -> None:
    for name in MADE:
        if keep_logs and name == "logs":
            continue
        p = d / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    for tmp in d.glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def down(d: Path, keep_logs: bool = False) -> list[str]:
    d = d.resolve()
    if not d.is_dir():
        return []
    killed = stop(d)
    _remove_made(d, keep_logs)
    try:
        d.rmdir()  # only if we left it empty
    except OSError:
        pass
    return killed
