"""The add-ons k3s users run beside the control plane, as REAL programs built from their Go modules:

  helm-controller    github.com/k3s-io/helm-controller @ HELM_CONTROLLER_VERSION (k3s's HelmChart controller;
                     k3s embeds it, here it runs standalone against DIR/kubeconfig, watching all namespaces as
                     k3s's does, under the controller name k3s gives it, `helm-controller`)
  kuberay-operator   github.com/ray-project/kuberay/ray-operator @ KUBERAY_VERSION (all namespaces, leader
                     election off, metrics off, health probes on a loopback port)
and, started first as k3s deploys them from its manifests: k3s's local-path storage (local_path.py: the objects of
its local-storage.yaml and the real local-path-provisioner) and Traefik's CRDs (traefik_crds.py).

build.py builds them with the control plane (BUILD_STEPS, BINARIES); cluster.py's `up` starts them (start()).
The helm-controller installs its own CRDs (HelmChart, HelmChartConfig) at start. The KubeRay operator exits if the
CRDs it watches are missing, so it is started through `python addons.py wait-crds`, which waits for them to be
Established and then execs the operator (same pid): in a cluster the operator's Deployment comes with the chart
that brings those CRDs. Here they arrive when the helm-install pod of the `kuberay-operator` HelmChart is played
by the node stand-in (chart_jobs.py), or from `up` itself when the helm-controller is off.
See README.md.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    from . import local_path
except ImportError:  # run as a script (wait-crds)
    import local_path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules"

HELM_CONTROLLER_VERSION = "v0.17.7"  # what k3s v1.36.3+k3s1 embeds (see README)
KUBERAY_VERSION = "v1.6.0"  # the proxy refuses v1.7.0's zip (piml's chart is 1.7.0)
BINARIES = ("helm-controller", "kuberay-operator", local_path.BINARY)
# The CRDs the KubeRay operator v1.6.0 watches (RayCronJob only behind a feature gate, off by default).
KUBERAY_CRDS = ("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")


def build_steps(bin_dir: Path) -> list[tuple[str, Path, dict, list[str]]]:
    """(name, module dir, extra env, go args) as build.py runs them. helm-controller as its scripts/build
    (CGO off, static, version stamped); the operator as its Dockerfile builds `manager`, without cgo and its FIPS
    tag."""
    hc = [
        "build",
        "-trimpath",
        "-ldflags",
        f"-X github.com/k3s-io/helm-controller/pkg/version.Version={HELM_CONTROLLER_VERSION} -s -w",
        "-o",
        str(bin_dir / "helm-controller"),
        "github.com/k3s-io/helm-controller",
    ]
    kr = [
        "build",
        "-trimpath",
        "-ldflags",
        "-s -w",
        "-o",
        str(bin_dir / "kuberay-operator"),
        "github.com/ray-project/kuberay/ray-operator",
    ]
    return [
        ("helm-controller", MODULES / "helm-controller", {"CGO_ENABLED": "0"}, hc),
        ("kuberay-operator", MODULES / "kuberay", {"CGO_ENABLED": "0"}, kr),
        local_path.build_step(bin_dir),
    ]


# --- in `up` -------------------------------------------------------------------------------------------------------
def start(
    up, helm_controller: bool = True, kuberay: bool = True, local_path_storage: bool = True, traefik_crds: bool = True
) -> None:
    """Start the add-ons chosen, after the nodes are Ready. `up` is cluster.Up (spawn, wait, state, paths)."""
    from . import cluster
    from . import traefik_crds as traefik
    from .chart_jobs import CHART_CRDS

    d, b, st = up.d, up.bin, up.state
    server, ctx = st["server"], cluster._ssl_ctx(st["tls"])
    st["addons"] = {
        "helm-controller": helm_controller,
        "kuberay-operator": kuberay,
        "local-path-provisioner": local_path_storage,
        "traefik-crds": traefik_crds,
    }
    if local_path_storage:
        local_path.start(up)  # k3s's manifests/local-storage.yaml, the provisioner as a process
    if traefik_crds:
        traefik.start(up)  # k3s's traefik-crd chart: Traefik's own CRDs
    env = {**cluster._clean_env(), "KUBECONFIG": str(d / "kubeconfig")}
    if helm_controller:
        p = up.spawn(
            "helm-controller",
            [
                str(b / "helm-controller"),
                f"--kubeconfig={d / 'kubeconfig'}",
                "--controller-name=helm-controller",
                "--namespace=",
                f"--node-name={st['nodes'][0]['name']}",  # k3s passes its own node's name: the server's
            ],
            env=env,
        )
        # It creates its CRDs, then takes its lease (kube-system/helm-controller-lock) and starts its controllers.
        up.wait(
            "helm-controller (HelmChart CRD Established, lease held)",
            p,
            lambda: _and(
                _established(server, ctx, "helmcharts.helm.cattle.io"),
                _lease_held(server, ctx, "kube-system", "helm-controller-lock"),
            ),
            60,
            "helm-controller.log",
        )
    if kuberay:
        if not helm_controller:  # nothing would bring the CRDs: install what the chart would
            _create_crds(server, ctx, CHART_CRDS["kuberay-operator"])
        probe = cluster.free_port()
        st.setdefault("ports", {})["kuberay-operator"] = probe
        p = up.spawn(
            "kuberay-operator",
            [
                sys.executable,
                str(HERE / "addons.py"),
                "wait-crds",
                str(d),
                ",".join(KUBERAY_CRDS),
                "--",
                str(b / "kuberay-operator"),
                "--enable-leader-election=false",
                "--watch-namespace=",
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                "--log-stdout-encoder=console",
            ],
            env=env,
        )
        if not helm_controller:
            up.wait(
                "kuberay-operator (/readyz)",
                p,
                lambda: cluster._ok(cluster._get(f"http://127.0.0.1:{probe}/readyz", None)),
                60,
                "kuberay-operator.log",
            )


def _and(a: tuple[bool, str], b: tuple[bool, str]) -> tuple[bool, str]:
    return (a[0] and b[0]), f"{a[1]}; {b[1]}"


def _get_json(url: str, ctx) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (OSError, ssl.SSLError, ValueError):
        return 0, {}


def _established(server: str, ctx, name: str) -> tuple[bool, str]:
    code, crd = _get_json(f"{server}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", ctx)
    ok = any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )
    return ok, f"CRD {name}: {'Established' if ok else f'HTTP {code}, not Established'}"


def _lease_held(server: str, ctx, ns: str, name: str) -> tuple[bool, str]:
    code, lease = _get_json(f"{server}/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", ctx)
    holder = (lease.get("spec") or {}).get("holderIdentity")
    return bool(holder), f"lease {ns}/{name}: {holder or f'HTTP {code}, no holder'}"


def create(server: str, ctx, collection: str, body: dict) -> None:
    """POST body to collection; one that exists already (409) is left as it is."""
    req = urllib.request.Request(
        f"{server}{collection}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, context=ctx, timeout=30).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            from .cluster import UpError

            what = f"{body.get('kind')} {body.get('metadata', {}).get('name')}"
            raise UpError(f"creating {what}: HTTP {e.code} {e.read()[:200]!r}") from None


def _create_crds(server: str, ctx, paths) -> list[str]:
    """Create the CRD of each YAML file (left as it is if it exists); their names."""
    import yaml

    names = []
    for path in paths:
        crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        create(server, ctx, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        names.append(crd["metadata"]["name"])
    return names


# --- `python addons.py wait-crds DIR NAMES -- ARGV...` ----------------------------------------------------------------
def wait_crds_then_exec(d: Path, names: list[str], argv: list[str]) -> int:
    """Wait (as long as it takes; `down` stops it) for the CRDs to be Established, then exec argv in this process."""
    state = json.loads((d / "controlplane.json").read_text())
    ctx = ssl.create_default_context(cafile=state["tls"]["server-ca"])
    ctx.load_cert_chain(state["tls"]["client-admin"], state["tls"]["client-admin-key"])
    said = ""
    while True:
        missing = [n for n in names if not _established(state["server"], ctx, n)[0]]
        if not missing:
            break
        msg = (
            f"waiting for the CRDs {', '.join(missing)} to be Established "
            "(they come with the HelmChart kuberay-operator)"
        )
        if msg != said:
            print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg, flush=True)
            said = msg
        time.sleep(1)
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), f"CRDs Established; exec {argv[0]}", flush=True)
    os.execv(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "wait-crds" and "--" in a:
        i = a.index("--")
        sys.exit(wait_crds_then_exec(Path(a[1]), a[2].split(","), a[i + 1 :]))
    print("usage: addons.py wait-crds DIR CRD[,CRD...] -- PROGRAM [ARGS...]", file=sys.stderr)
    sys.exit(2)
