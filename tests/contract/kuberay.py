"""The Pods and head Service the KubeRay operator makes from a RayCluster, from the operator's own code.

tests/contract/kuberay/ is a small Go program that calls KubeRay's pod builders (ray-operator/controllers/ray/
common: DefaultHeadPodTemplate, DefaultWorkerPodTemplate, BuildPod, BuildServiceForHeadPod), built from the
official Go module and cached under the contract cache. The Go module proxy here refuses the pinned operator's
release (1.7.0), so the newest one it serves below it runs: see KUBERAY_MODULE_VERSION and the test output.
What the reconciler adds around those builders (owner references, the auth Secret when no secretName is given)
is not run: piml names its own Secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.contract.images import CACHE, NOTES

SOURCE = Path(__file__).resolve().parent / "kuberay"
KUBERAY_MODULE_VERSION = next(
    line.split()[-1]
    for line in (SOURCE / "go.mod").read_text().splitlines()
    if "ray-project/kuberay/ray-operator " in line
)


def go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not found:
        raise RuntimeError("the contract tests build KubeRay's pod builders with Go: install Go (golang-go) first")
    return found


def tool() -> Path:
    """The built program, keyed by its sources (a changed go.mod or main.go builds anew)."""
    key = hashlib.sha256(
        b"".join((SOURCE / name).read_bytes() for name in ("go.mod", "go.sum", "main.go"))
    ).hexdigest()[:12]
    binary = CACHE / f"kuberay-pods-{key}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".kuberay-pods-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder: scripts/test's background prewarm may be at it
        if not binary.exists():
            _build(binary)
    return binary


def _build(binary: Path) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    result = subprocess.run(
        [go(), "build", "-o", str(binary) + ".tmp", "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode:
        raise RuntimeError(f"building KubeRay's pod builders failed:\n{result.stderr[-3000:]}")
    os.replace(str(binary) + ".tmp", binary)


def operator_objects(ray_cluster: dict) -> dict:
    """{"head": Pod, "workers": {group: Pod}, "headService": Service} as the operator builds them."""
    NOTES.add(
        f"KubeRay's pod builders: ray-operator {KUBERAY_MODULE_VERSION} (the newest the Go proxy serves at or below "
        "the pinned chart's release)"
    )
    result = subprocess.run([str(tool())], input=json.dumps(ray_cluster), capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise RuntimeError(f"KubeRay's pod builders refused the RayCluster: {result.stderr.strip()}")
    built = json.loads(result.stdout)
    built["headService"].update(apiVersion="v1", kind="Service")  # the builders leave TypeMeta empty
    for pod in (built["head"], *built["workers"].values()):
        pod.update(apiVersion="v1", kind="Pod")
    for port in built["headService"]["spec"].get("ports", []):
        if not port.get("targetPort"):
            port["targetPort"] = port["port"]  # the API server's default
    return built
