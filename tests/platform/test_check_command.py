"""`piml check` and `piml up --only verify` as a user runs them, end to end through the REAL Kubernetes API.

The platform is deployed on the real control plane (tests/platform/conftest.py): the real scheduler places its
pods, KubeRay's operator makes the Ray head, the Deployment controller reports them available. Each pod's
port-forward, through the real API server and the kubelet's own streaming code (the stand-in kubelet's
kubelet-streams), leads to a real service on loopback: MLflow with basic auth, a Dask scheduler and worker, a
Ray head, Redis. So piml finds the pods by label, reads the Redis password from its Secret, port-forwards with the
kubernetes client's WebSocket streams and probes real servers; `kubectl exec` into the Dask scheduler's pod runs
the probe script next to the local scheduler. The nodes sit on loopback ports where nothing listens: their SSH
checks fail at once (the node checks themselves are tested on real SSH test nodes in tests/nodechecks).

KEDA's operator does not run on the plane (tests/controlplane/README.md): the `keda` row says so and how to
look, which is what a real cluster whose KEDA install failed shows."""

from __future__ import annotations

import http.server
import json
import os
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from piml.fsutil import write_atomic
from piml.kube.deploy import deploy
from tests.platform.conftest import FAST, INVENTORY, NODES
from tests.platform.test_port_forward import behind
from tests.ports import free_port
from tests.queue.helpers import assert_no_secrets, loopback_http, start_runner, stop

NAMESPACE = "piml"


@contextmanager
def prefixed(target: str, prefix: str = "/mlflow"):
    """The cluster serves MLflow under /mlflow (--static-prefix); the test server has no prefix. This loopback
    proxy strips it, passing method, headers (Authorization too), body and status through."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _relay(self):
            path = self.path[len(prefix) :] if self.path.startswith(prefix) else self.path
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")
            }
            request = urllib.request.Request(target + (path or "/"), data=body, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, data, kind = response.status, response.read(), response.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
            self.send_response(status)
            self.send_header("Content-Type", kind or "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _relay

        def log_message(self, *args):
            pass

    with loopback_http(Handler) as port:
        yield port


def pods_by_component(kube) -> dict[str, str]:
    found = {}
    for pod in kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
        labels = pod["metadata"].get("labels", {})
        found[labels.get("piml.io/component") or labels.get("app.kubernetes.io/name", "")] = pod["metadata"]["name"]
    return found


SETTINGS = {"ray": {"check_pip": []}}  # the local Ray has mlflow and scikit-learn: no pip from PyPI


@pytest.fixture
def lab(project, plane, mlflow_server, redis_server, dask_cluster, ray_head):
    """The project's platform deployed on the real control plane, each pod's port leading to a real service."""
    secrets = project.secrets  # then the services' own passwords, as `piml up` would have put them there
    secrets.update(
        mlflow_admin_password=mlflow_server.password,
        redis_password=redis_server.password,
        ray_auth_token=ray_head.token,
    )
    write_atomic(project.root / ".piml" / "secrets.yaml", json.dumps(secrets), mode=0o600)
    (project.root / "piml.yaml").write_text(
        "ray:\n  check_pip: []  # the local Ray has mlflow and scikit-learn: no pip from PyPI\n"
    )
    kube = plane.kube()
    with prefixed(mlflow_server.url.rstrip("/")) as mlflow_port:
        try:
            cluster, rendered = project.render(SETTINGS)
            deploy(cluster, project.kubeconfig, rendered, FAST)
            pods = pods_by_component(kube)
            dask_dashboard = int(dask_cluster.dashboard_url.split(":")[2].split("/")[0])
            ray_dashboard = int(ray_head.dashboard_url.rsplit(":", 1)[1])
            behind(plane, NAMESPACE, pods["mlflow"], 5000, mlflow_port)
            behind(plane, NAMESPACE, pods["dask-scheduler"], 8787, dask_dashboard)
            behind(plane, NAMESPACE, pods["ray-head"], 8265, ray_dashboard)
            behind(plane, NAMESPACE, pods["redis"], 6379, redis_server.port)
            # `kubectl exec` into the scheduler's pod runs here, next to the local scheduler
            # (`python` there is this venv's, which has distributed, as the Dask image's has)
            path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
            env = {"DASK_SCHEDULER_ADDRESS": dask_cluster.address, "PATH": path}
            (plane.dir / "execs.json").write_text(json.dumps({f"{NAMESPACE}/{pods['dask-scheduler']}": {"env": env}}))
            project.pods = pods
            yield project
        finally:
            for made in ("forwards.json", "execs.json"):
                (plane.dir / made).unlink(missing_ok=True)
            kube.close()


def rows_of(out) -> dict[tuple[str, str], dict]:
    return {(r["target"], r["check"]): r for r in json.loads(out.stdout)["checks"]}


def test_check_proves_cluster_and_components_and_names_the_unreachable_nodes(piml, lab):
    out = piml("check", "--json", cwd=lab.root)
    assert "Traceback" not in out.stdout + out.stderr
    assert_no_secrets(out.stdout + out.stderr)
    assert out.returncode == 1, out.stderr  # the nodes cannot be reached over SSH
    data = json.loads(out.stdout)
    rows = rows_of(out)
    failed = {key for key, row in rows.items() if row["status"] == "fail"}
    # the nodes' SSH, and KEDA, which the plane does not run: said with where to look
    assert failed == {*((n, "reach") for n in NODES), ("keda", "serving metrics")}, json.dumps(data, indent=1)
    keda = rows[("keda", "serving metrics")]
    assert "no keda-operator Deployment in namespace keda" in keda["detail"], keda
    assert "helm-install-keda" in keda["fix"], keda
    groups = {row["group"] for row in data["checks"]}
    assert groups == {"nodes", "cluster", "components"}
    for key in [
        *((n, "Ready") for n in NODES),
        ("mlflow", "ready"),
        ("ray", "ready"),
        ("mlflow", "health"),
        ("mlflow", "auth"),
        ("dask", "health"),
        ("dask", "workers"),
        ("ray", "dashboard"),
        ("ray", "nodes"),
        ("queue", "broker"),
        ("queue", "queues"),
    ]:
        assert rows[key]["status"] == "pass", (key, rows.get(key))
    assert "1 worker" in rows[("dask", "workers")]["detail"]
    assert all(isinstance(r["seconds"], (int, float)) for r in data["checks"]) and data["ok"] is False
    assert "node-1" in out.stderr and "check(s) failed" in out.stderr  # one summary line on stderr
    table = piml("check", cwd=lab.root)
    assert table.returncode == 1 and "piml check" in table.stdout and "mlflow" in table.stdout
    assert_no_secrets(table.stdout + table.stderr)


def test_a_component_gone_fails_its_own_rows_only(piml, lab):
    behind(lab.plane, NAMESPACE, lab.pods["redis"], 6379, free_port())  # nothing listens there: Redis is "down"
    rows = rows_of(piml("check", "--json", cwd=lab.root))
    assert rows[("queue", "broker")]["status"] == "fail" and rows[("queue", "broker")]["fix"]
    assert (
        rows[("mlflow", "auth")]["status"]
        == rows[("dask", "workers")]["status"]
        == rows[("ray", "nodes")]["status"]
        == "pass"
    )


def test_up_verify_stage_reports_in_the_summary(piml, lab):
    out = piml("up", "--only", "verify", "--json", cwd=lab.root)
    assert out.returncode == 1
    data = json.loads(out.stdout)
    statuses = {(r["target"], r["check"]): r["status"] for r in data["stages"]["verify"]}
    assert statuses[("mlflow", "auth")] == "pass" and statuses[("node-1", "reach")] == "fail"
    assert set(data["failed"]) == {*NODES, "keda"}
    assert_no_secrets(out.stdout + out.stderr)


def test_no_kubeconfig_is_one_clear_failure(piml, tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory/hosts.yml").write_text(INVENTORY)
    out = piml("check", "--json", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    rows = rows_of(out)
    assert rows[("cluster", "API")]["status"] == "fail" and "no kubeconfig" in rows[("cluster", "API")]["detail"]
    assert not [r for r in rows.values() if r["group"] == "components"]


def test_deep_check_runs_work_through_the_api(piml, lab, runner_env, redis_server, tmp_path):
    """--deep through the API: the Ray job goes in through the dashboard's port-forward, the Dask computation
    through exec into the scheduler's pod, the request through the Redis tunnel; a runner here plays the
    Job KEDA would start."""
    # The bounds are piml's own (600 s for the deep rows), not the test's. The Redis behind the tunnel is the
    # session's, shared with other tests: a request one of them left queued was taken by this `--once` runner
    # instead of piml's (seen in CI twice: "still queued after 600 s: no runner took it"). It starts empty here,
    # as a KEDA Job per request would not have been held up by it.
    from piml.queue import connect

    broker = connect(redis_server.url)
    broker.r.flushdb()
    broker.close()
    runner = start_runner(
        {**runner_env, "PIML_QUEUE_URL": redis_server.url, "PIML_NODE_NAME": "node-2"},
        "--once",
        "--wait",
        "660",
        log=tmp_path / "runner.log",
    )
    try:
        out = piml("check", "--deep", "--json", cwd=lab.root, timeout=660)
    finally:
        stop(runner)
    assert_no_secrets(out.stdout + out.stderr)
    rows = rows_of(out)
    deep = {key: row for key, row in rows.items() if row["group"] == "deep"}
    assert {key for key in deep} >= {("ray", "train and register"), ("dask", "computation"), ("queue", "request")}, deep
    assert all(row["status"] == "pass" for row in deep.values()), json.dumps(list(deep.values()), indent=1)
    assert "node-2" in deep[("queue", "request")]["detail"]
