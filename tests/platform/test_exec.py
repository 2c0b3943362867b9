"""Exec into pods through the real API server: `kubectl exec` (WebSocket v5, 1.36's default, translated to SPDY
as the kubelet does, and SPDY) and piml's own (the kubernetes client's WebSocket, which `piml check` uses to run
its probes in the Dask scheduler's pod). The API server proxies to the pod's node's kubelet, where the kubelet's
own streaming code (tests/controlplane/modules/kubelet-streams, the one stand-in) runs the command as a local
process with the pod's environment (DIR/execs.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.platform.test_port_forward import running_pod

NAMESPACE = "exec-test"
SCRIPT = "import os, sys; print(os.environ['GREETING']); sys.stderr.write('to stderr\\n'); sys.exit(int(sys.argv[1]))"


@pytest.fixture(scope="module")
def python_pod(plane):
    """A running pod `py` whose commands run here with GREETING=hello (and this Python first on PATH)."""
    kube = plane.kube()
    running_pod(kube, NAMESPACE, "py", {"app": "py"})
    path = f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"
    (plane.dir / "execs.json").write_text(json.dumps({f"{NAMESPACE}/py": {"env": {"GREETING": "hello", "PATH": path}}}))
    yield "py"
    kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
    kube.close()


@pytest.mark.parametrize("websockets", ["true", "false"], ids=["websocket-v5", "spdy"])
def test_kubectl_exec_runs_in_the_pod_with_its_streams_and_exit_code(plane, kubectl, python_pod, websockets, tmp_path):
    env = {"KUBECONFIG": str(plane.kubeconfig), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": websockets, "HOME": str(tmp_path)}
    kubectl_exec = [str(kubectl), "exec", "-n", NAMESPACE, python_pod, "--"]
    done = subprocess.run(
        [*kubectl_exec, "python", "-c", SCRIPT, "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello\n", "to stderr\n")
    failed = subprocess.run(
        [*kubectl_exec, "python", "-c", SCRIPT, "3"], env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 3 and failed.stdout == "hello\n"
    assert "command terminated with exit code 3" in failed.stderr, failed.stderr
    piped = subprocess.run(
        [
            str(kubectl),
            "exec",
            "-i",
            "-n",
            NAMESPACE,
            python_pod,
            "--",
            "python",
            "-c",
            "import sys; print(sys.stdin.read()[::-1])",
        ],
        env=env,
        input="stdin reaches it",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (piped.returncode, piped.stdout) == (0, "ti sehcaer nidts\n"), piped.stderr


def test_piml_runs_its_probe_scripts_in_the_pod(plane, python_pod):
    """piml check's pod_python: the script's stdout back; a failing script is one line with its exit code and its
    last line of stderr."""
    from piml.health.connect import pod_python
    from piml.health.result import CheckFailed
    from piml.kube.client import core_api

    run = pod_python(core_api(plane.kubeconfig), NAMESPACE, "app=py", "py")
    assert run("import os; print(os.environ['GREETING'] * 2)") == "hellohello\n"
    with pytest.raises(CheckFailed) as failed:
        run("import sys; sys.stderr.write('first\\nthe reason\\n'); sys.exit(4)")
    assert failed.value.detail == "the script in pod py exited with 4: the reason", failed.value.detail


def test_a_command_the_pod_does_not_have_is_the_runtimes_error(plane, kubectl, python_pod, tmp_path):
    kube = plane.kube()
    running_pod(kube, NAMESPACE, "bare", {"app": "bare"})  # not in execs.json: nothing can run in it
    kube.close()
    env = {"KUBECONFIG": str(plane.kubeconfig), "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(kubectl), "exec", "-n", NAMESPACE, "bare", "--", "python", "-V"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert 'exec: "python": executable file not found in $PATH' in done.stderr, done.stderr
