"""Traefik's CRDs (traefik.io/v1alpha1: Middleware, IngressRoute, ...), REAL, as k3s installs them through its
traefik-crd chart. See README.md.

The CRD files are Traefik's own, from its Go module github.com/traefik/traefik/v3 @ VERSION
(docs/content/reference/dynamic-configuration/traefik.io_*.yaml), downloaded by `go mod download` into the Go
module cache build.py uses (its GOMODCACHE, GOFLAGS; bounded) when `up` runs, and never copied into this
repository. VERSION is what k3s v1.36.3+k3s1 ships (its release notes: "Use new Traefik v3.7.8"; v1.36.4+k3s1's
table of embedded components still says Traefik v3.7.8). sum.golang.org does not know that version (404), so it is
fetched with GONOSUMDB for it and checked against SUM below (the hash Go computed for it the first time here).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

MODULE = "github.com/traefik/traefik/v3"
VERSION = "v3.7.8"
SUM = "h1:fgLRGI4WQFjvSaxoscyV4pjBu+rBdtc24NWgyTy4na0="  # `go mod download -json` "Sum" of MODULE@VERSION
CRD_DIR = "docs/content/reference/dynamic-configuration"
DOWNLOAD_TIMEOUT = 600  # a 37 MB zip, once; then the module cache answers at once


class TraefikError(Exception):
    pass


def module_dir(log=print) -> Path:
    """MODULE@VERSION's directory in the module cache, downloaded first if needed; its hash checked."""
    from . import build

    go = build.find_go()
    if not go:
        raise TraefikError("Go not found (looked on PATH and in /usr/local/go/bin); install Go >= 1.26.5")
    env = build.go_env()
    env["GONOSUMDB"] = ",".join(x for x in (env.get("GONOSUMDB"), "github.com/traefik/traefik") if x)
    build.CACHE.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            cwd=build.CACHE,  # outside any module
            env=env,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise TraefikError(f"go mod download {MODULE}@{VERSION}: no answer within {DOWNLOAD_TIMEOUT} s") from None
    try:
        info = json.loads(r.stdout)
    except ValueError:
        info = {}
    if r.returncode != 0 or info.get("Error") or not info.get("Dir"):
        why = (info.get("Error") or r.stderr.strip() or f"exit {r.returncode}").splitlines()[0][:300]
        raise TraefikError(f"go mod download {MODULE}@{VERSION}: {why}")
    if info.get("Sum") != SUM:
        raise TraefikError(f"{MODULE}@{VERSION} in the module cache has hash {info.get('Sum')}, expected {SUM}")
    return Path(info["Dir"])


def crd_files(mod: Path) -> list[Path]:
    files = sorted((mod / CRD_DIR).glob("traefik.io_*.yaml"))
    if not any(f.name == "traefik.io_middlewares.yaml" for f in files):
        raise TraefikError(f"no traefik.io_middlewares.yaml in {mod / CRD_DIR}")
    return files


# --- in `up` ---------------------------------------------------------------------------------------------------------
def start(up) -> None:
    """Create Traefik's traefik.io CRDs and wait (bounded) until each is Established."""
    from . import addons, cluster

    st = up.state
    server, ctx = st["server"], cluster._ssl_ctx(st["tls"])
    try:
        files = crd_files(module_dir())
    except TraefikError as e:
        raise cluster.UpError(f"Traefik's CRDs: {e}") from None
    names = addons._create_crds(server, ctx, files)
    st.setdefault("addons", {})["traefik-crds"] = {"module": f"{MODULE}@{VERSION}", "crds": names}

    def established() -> tuple[bool, str]:
        missing = [n for n in names if not addons._established(server, ctx, n)[0]]
        return not missing, f"not Established: {', '.join(missing)}"

    up.wait("Traefik's CRDs (Established)", None, established, 60, "kube-apiserver.log")
