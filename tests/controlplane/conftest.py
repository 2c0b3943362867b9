"""Fixtures shared by the control plane's own tests."""

from __future__ import annotations

import pytest

from tests.controlplane.test_control_plane import cp


@pytest.fixture(scope="module")
def bare_plane(tmp_path_factory):
    """One stand-in node and the control plane alone (no helm-controller, no KubeRay): (DIR, piml's client)."""
    from piml.kube.client import connect

    build = cp("build", timeout=3 * 3600)
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "1", "--no-helm-controller", "--no-kuberay", timeout=300)
    assert r.returncode == 0, r.stderr
    k = connect(d / "kubeconfig", request_timeout=10)
    yield d, k
    k.close()
    cp("down", str(d), timeout=60)
