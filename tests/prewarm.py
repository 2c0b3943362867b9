"""What the one-at-a-time and control-plane phases of scripts/test fetch and build, made ahead: scripts/test runs
this in the background once its first phase is done, at the lowest CPU and I/O priority. In the order the tests
need them: the test nodes' root filesystem, the contract tests' mirrors of the pinned images (virtualenvs) and
KubeRay's pod builders, then the control plane, kubectl and kubelet-streams. Each is cached and built under its own
lock, so a test that needs one meanwhile waits for it. A step that fails is only printed: the test that needs it
builds it again and says what failed in its own words."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

# The settings the contract tests start their platforms with, as far as they change the images: each mirror is
# keyed by the image's version, so one render per distinct image set is enough.
CONTRACT_SETUPS = (
    ("pi5-3x8gb", {"mlflow": {"backend": "postgresql", "artifacts": "minio"}, "queue": {"kind": "rabbitmq"}}),
    ("pi5-3x8gb", {"queue": {"kind": "redis"}}),
    ("amd64-server-arm64-agents", {}),
)


def rootfs() -> None:
    from tests.nodes import substrate

    if os.geteuid() == 0 and shutil.which("debootstrap"):
        substrate.ensure_rootfs(log=print)


def contract_mirrors() -> None:
    import importlib.metadata

    from tests.contract import images, kuberay
    from tests.contract.platform import images_used, render
    from tests.contract.test_deep import ray_pip_for

    kuberay.tool()
    used: set[str] = set()
    for scenario, settings in CONTRACT_SETUPS:
        with tempfile.TemporaryDirectory() as project:
            used |= images_used(render(scenario, settings, Path(project))[1])
    images.for_images(used)
    ray = min(image for image in used if image.startswith("rayproject/ray:"))
    images.ray(ray, tuple(ray_pip_for(importlib.metadata.version("mlflow"))))  # the deep test's user Ray image


def control_plane() -> None:
    from tests.controlplane import build

    for step in (build.build, build.kubectl, build.kubelet_streams):
        step(log=print)


def main() -> None:
    for step in (rootfs, contract_mirrors, control_plane):
        started = time.monotonic()
        try:
            step()
            print(f"prewarm: {step.__name__} ready in {time.monotonic() - started:.0f} s", flush=True)
        except Exception:  # the test that needs it tries again and reports it
            print(f"prewarm: {step.__name__} failed:\n{traceback.format_exc()}", flush=True)


if __name__ == "__main__":
    main()
