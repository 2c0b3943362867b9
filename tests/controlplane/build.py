"""Build the real Kubernetes control plane used by the tests, from official Go modules.

kube-apiserver, kube-controller-manager and kube-scheduler come from k8s.io/kubernetes v1.36.3 (the Kubernetes
of the pinned k3s v1.36.3+k3s1), kine (k3s's SQLite datastore) from github.com/k3s-io/kine, and the add-ons of
addons.py (k3s's helm-controller, the KubeRay operator, k3s's local-path-provisioner). The Go modules are described
by modules/*/go.mod next to this file; the binaries land in CACHE/<key>/bin where the key is a hash of those
go.mod/go.sum files, the Go version and the build flags, so a second build with the same inputs is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    from . import addons
except ImportError:  # run as a script
    import addons

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules"
CACHE = Path(os.environ.get("PIML_CONTROLPLANE_CACHE", "/var/cache/piml-controlplane"))

KUBE_VERSION = "v1.36.3"  # Kubernetes of k3s v1.36.3+k3s1
KINE_VERSION = "v0.17.5"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kine") + addons.BINARIES
MODULE_DIRS = ("kube", "kine", "helm-controller", "kuberay", "local-path-provisioner")  # under modules/: the cache key

# As kubernetes' hack/lib/golang.sh builds its non-debug, static control-plane binaries.
KUBE_TAGS = "selinux,notest,grpcnotrace"
# As kine's scripts/build (minus the nats driver, which the tests do not use).
KINE_TAGS = (
    "sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,"
    "sqlite_dbstat,sqlite_column_metadata"
)
KINE_CFLAGS = " ".join(
    "-D" + d
    for d in (
        "SQLITE_DEFAULT_MEMSTATUS=0",
        "SQLITE_DISABLE_INTRINSIC",
        "SQLITE_ENABLE_COLUMN_METADATA",
        "SQLITE_ENABLE_DBPAGE_VTAB",
        "SQLITE_ENABLE_DBSTAT_VTAB",
        "SQLITE_ENABLE_MATH_FUNCTIONS",
        "SQLITE_ENABLE_MEMORY_MANAGEMENT",
        "SQLITE_ENABLE_OFFSET_SQL_FUNC",
        "SQLITE_ENABLE_PREUPDATE_HOOK",
        "SQLITE_ENABLE_RBU",
        "SQLITE_ENABLE_RTREE",
        "SQLITE_ENABLE_SESSION",
        "SQLITE_ENABLE_SNAPSHOT",
        "SQLITE_ENABLE_STAT4",
        "SQLITE_ENABLE_UNLOCK_NOTIFY",
        "SQLITE_LIKE_DOESNT_MATCH_BLOBS",
        "SQLITE_THREADSAFE=1",
        "SQLITE_WITHOUT_ZONEMALLOC",
    )
)


class BuildError(Exception):
    pass


def find_go() -> str | None:
    go = shutil.which("go")
    if go:
        return go
    for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _go() -> str:
    go = find_go()
    if not go:
        raise BuildError("Go not found (looked on PATH and in /usr/local/go/bin); install Go >= 1.26.5")
    return go


def _kube_ldflags() -> str:
    major, minor, _ = KUBE_VERSION.lstrip("v").split(".")
    pairs = {
        "gitVersion": KUBE_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    xs = [
        f"-X k8s.io/{pkg}.{k}={v}"
        for pkg in ("component-base/version", "client-go/pkg/version")
        for k, v in pairs.items()
    ]
    return "all=" + " ".join(xs) + " -s -w"


def _steps(bin_dir: Path) -> list[tuple[str, Path, dict, list[str]]]:
    kube = [
        "build",
        "-trimpath",
        "-tags",
        KUBE_TAGS,
        "-ldflags",
        _kube_ldflags(),
        "-o",
        str(bin_dir) + "/",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
    ]
    kine = [
        "build",
        "-trimpath",
        "-tags",
        KINE_TAGS,
        "-ldflags",
        f"-X github.com/k3s-io/kine/pkg/version.Version={KINE_VERSION} -s -w",
        "-o",
        str(bin_dir / "kine"),
        "github.com/k3s-io/kine",
    ]
    return [
        ("kube", MODULES / "kube", {"CGO_ENABLED": "0"}, kube),
        ("kine", MODULES / "kine", {"CGO_ENABLED": "1", "CGO_CFLAGS": KINE_CFLAGS}, kine),
    ] + addons.build_steps(bin_dir)


def version_key(go: str) -> str:
    h = hashlib.sha256()
    for mod in MODULE_DIRS:
        for f in ("go.mod", "go.sum"):
            h.update((MODULES / mod / f).read_bytes())
    h.update(subprocess.run([go, "version"], capture_output=True, text=True, timeout=60).stdout.encode())
    h.update(repr([(n, env, args) for n, _cwd, env, args in _steps(Path("BIN"))]).encode())  # not the checkout's path
    return f"k8s-{KUBE_VERSION}-{h.hexdigest()[:12]}"


def go_env() -> dict:
    """The environment of every go command here: caches under CACHE, the local toolchain, no VCS stamping."""
    env = dict(os.environ)
    env.update(
        GOCACHE=str(CACHE / "gocache"),
        GOMODCACHE=str(CACHE / "gomodcache"),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=readonly -buildvcs=false",
    )
    go = find_go()
    if go:
        env["PATH"] = str(Path(go).parent) + os.pathsep + env.get("PATH", "")
    return env


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def bin_dir_if_built() -> Path | None:
    go = find_go()
    if not go:
        return None
    d = CACHE / version_key(go) / "bin"
    return d if (d.parent / "build-info.json").exists() and all((d / b).exists() for b in BINARIES) else None


def build(log=print) -> Path:
    """Return the bin dir holding the control-plane binaries, building them first if needed."""
    go = _go()
    key = version_key(go)
    top = CACHE / key
    bin_dir = top / "bin"
    info = top / "build-info.json"
    top.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiter then finds the binaries made
        if info.exists() and all((bin_dir / b).exists() for b in BINARIES):
            return bin_dir
        tmp = top / "bin.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        logfile = top / "build.log"
        env = go_env()
        t0 = time.monotonic()
        timings = {}
        log(f"building the control plane ({', '.join(BINARIES)}) into {bin_dir}; log: {logfile}")
        with open(logfile, "w") as out:
            for name, cwd, extra, args in _steps(tmp):
                s0 = time.monotonic()
                out.write(f"$ ({cwd}) {' '.join(f'{k}={v!r}' for k, v in extra.items())} go {' '.join(args)}\n")
                out.flush()
                try:
                    rc = subprocess.run(
                        [go, *args],
                        cwd=cwd,
                        env={**env, **extra},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=3 * 3600,
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout (3 h)"
                if rc != 0:
                    tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                    raise BuildError(f"go build of {name} failed ({rc}): {tail[0][:200]} (full log: {logfile})")
                timings[name] = round(time.monotonic() - s0, 1)
        shutil.rmtree(bin_dir, ignore_errors=True)
        tmp.rename(bin_dir)
        meta = {
            "key": key,
            "kubernetes": KUBE_VERSION,
            "kine": KINE_VERSION,
            "helm-controller": addons.HELM_CONTROLLER_VERSION,
            "kuberay-operator": addons.KUBERAY_VERSION,
            "local-path-provisioner": addons.local_path.VERSION,
            "go": subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip(),
            "seconds": round(time.monotonic() - t0, 1),
            "seconds_per_step": timings,
            "bin_bytes": _du(bin_dir),
            "gocache_bytes": _du(CACHE / "gocache"),
            "gomodcache_bytes": _du(CACHE / "gomodcache"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp_info = info.with_suffix(".tmp")
        tmp_info.write_text(json.dumps(meta, indent=2) + "\n")
        tmp_info.rename(info)
        log(f"built in {meta['seconds']} s")
        return bin_dir


def _kubectl_args(out: str) -> list[str]:
    return ["build", "-trimpath", "-ldflags", _kube_ldflags(), "-o", out, "k8s.io/kubernetes/cmd/kubectl"]


def kubectl(log=print) -> Path:
    """kubectl at KUBE_VERSION (the kubectl `k3s kubectl` is), for tests that run the kubectl commands piml's
    playbooks render; built once into CACHE/kubectl-<key>/kubectl from modules/kubectl, its own module and key so
    that the control plane is not rebuilt for it (the Go build cache shares what they have in common)."""
    return _own_module("kubectl", _kubectl_args, log)


def kubelet_streams(log=print) -> Path:
    """The kubelet's streaming stand-in (modules/kubelet-streams/main.go: port-forward served by the kubelet's own
    streaming code), built once into CACHE/kubelet-streams-<key>/, its own module and key as kubectl's."""
    return _own_module("kubelet-streams", lambda out: ["build", "-trimpath", "-ldflags", "-s -w", "-o", out, "."], log)


def _own_module(name: str, args, log) -> Path:
    """Build the one binary of modules/<name> with `go <args(OUT)>`, once per go.mod/go.sum/Go/args (and main.go
    when the module has its own code), into CACHE/<name>-<key>/<name>; under a lock, so parallel tests build once."""
    go = _go()
    h = hashlib.sha256()
    for f in ("go.mod", "go.sum", "main.go"):
        if (MODULES / name / f).exists():
            h.update((MODULES / name / f).read_bytes())
    h.update(subprocess.run([go, "version"], capture_output=True, text=True, timeout=60).stdout.encode())
    h.update(repr(args("OUT")).encode())
    top = CACHE / f"{name}-{KUBE_VERSION}-{h.hexdigest()[:12]}"
    binary = top / name
    top.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{top.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        log(f"building {name} {KUBE_VERSION} into {binary}")
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                [go, *args(str(top / f"{name}.tmp"))],
                cwd=MODULES / name,
                env={**go_env(), "CGO_ENABLED": "0"},
                capture_output=True,
                text=True,
                timeout=3600,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"go build of {name} took over an hour") from None
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise BuildError(f"go build of {name} failed: {said[:200]}")
        (top / f"{name}.tmp").rename(binary)
        log(f"built {name} in {time.monotonic() - t0:.0f} s")
        return binary


def main(argv: list[str]) -> int:
    try:
        d = build(log=lambda m: print(m, file=sys.stderr))
    except BuildError as e:
        print(f"control-plane build: {e}", file=sys.stderr)
        return 1
    print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
