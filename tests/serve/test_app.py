"""piml's Ray Serve application (piml/serve/app.py) on a real Ray Serve, serving a model registered in a real
MLflow server with basic auth, on two replicas: its answers are the model's own, a bad request is a 400 with one
line, and a reload switches every replica to the alias's new version without a failed request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.serve.conftest import MODEL, SERVE_TOKEN, iris


def serve_config(head, route: str, model: str, batch_size: int = 8) -> dict:
    """What piml renders into the RayService's serveConfigV2 for this route (piml.serve.apps), two replicas and no
    pip (this venv has what the pods' runtime_env installs); only the HTTP proxy listens where the test says."""
    from piml.config import PimlConfig
    from piml.serve import apps

    settings = {"model": model, "batch_size": batch_size, "min_replicas": 2, "max_replicas": 2}
    config = PimlConfig.model_validate({"serve": {"enabled": True, "pip": [], "routes": {route: settings}}})
    rendered = apps.serve_config(config)
    port = int(head.serve_url.rsplit(":", 1)[1])
    return {**rendered, "http_options": {"host": "127.0.0.1", "port": port}}


AUTH = {"Authorization": f"Bearer {SERVE_TOKEN}"}


def call(url: str, body: bytes | None = None, content_type: str = "application/json", **headers: str):
    """(status, JSON answer) of a POST (body given) or GET, with the serving token unless `headers` say otherwise."""
    headers = {"Content-Type": content_type, **AUTH, **headers}
    headers = {k: v for k, v in headers.items() if v}  # Authorization="" sends none
    request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, {"error": text}


def get(url: str) -> dict:
    status, answer = call(url)
    assert status == 200, answer
    return answer


@pytest.fixture(autouse=True)
def _token_in_env(monkeypatch):
    """`piml serve` here has no project: it takes the serving token from $PIML_SERVE_TOKEN, as a user can."""
    monkeypatch.setenv("PIML_SERVE_TOKEN", SERVE_TOKEN)


@pytest.fixture(scope="module")
def iris_route(serve_head, served_model):
    serve_head.deploy(serve_config(serve_head, "iris", f"models:/{MODEL}@champion"))
    return f"{serve_head.serve_url}/serve/iris"


def sample():
    return iris()[0].iloc[::10].reset_index(drop=True)


def test_predictions_are_the_models_own(iris_route, served_model):
    frame = sample()
    expected = served_model.versions["1"].predict(frame).tolist()
    probabilities = served_model.versions["1"].predict_proba(frame).tolist()
    bodies = {
        "dataframe_split": json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode(),
        "dataframe_records": json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode(),
        "csv": frame.to_csv(index=False).encode(),
    }
    for name, body in bodies.items():
        status, answer = call(f"{iris_route}/predict", body, "text/csv" if name == "csv" else "application/json")
        assert status == 200, (name, answer)
        assert answer["predictions"] == expected, name
        assert answer["probabilities"] == probabilities, name  # JSON carries floats exactly
        assert (answer["model"], answer["version"]) == (MODEL, "1"), name


def test_info_names_the_version_loaded(iris_route):
    info = get(f"{iris_route}/")
    assert info["route"] == "iris" and info["model"] == MODEL and info["version"] == "1"
    assert info["uri"] == f"models:/{MODEL}@champion" and info["since"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "not JSON: "),
        (b'{"rows": [[1, 2, 3, 4]]}', "application/json", "exactly one of inputs, dataframe_split"),
        (b'{"dataframe_records": [{"nope": 1}]}', "application/json", "the model refused the rows: "),
        (b"\xff\xfe", "application/json", "the body is not UTF-8 text"),
        (b"a,b\n1,2\n", "application/xml", "content type 'application/xml' is not served"),
    ],
    ids=["not-json", "no-format-key", "wrong-columns", "not-utf8", "xml"],
)
def test_a_bad_request_is_a_400_with_one_line(iris_route, body, content_type, reason):
    status, answer = call(f"{iris_route}/predict", body, content_type)
    assert status == 400, answer
    assert reason in answer["error"] and "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_requests_together_are_answered_each_with_its_own_rows(serve_head, iris_route, served_model):
    """Concurrent requests are batched into one model call; each still gets exactly its rows' predictions."""
    from concurrent.futures import ThreadPoolExecutor

    frame = sample()
    singles = [frame.iloc[[i]] for i in range(len(frame))]
    bodies = [json.dumps({"dataframe_split": s.to_dict(orient="split")}).encode() for s in singles]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: call(f"{iris_route}/predict", b), bodies))
    assert [a for s, a in answers if s != 200] == [], serve_head.replica_log()
    assert [a["predictions"] for _, a in answers] == [served_model.versions["1"].predict(s).tolist() for s in singles]


# -- the CLI: `piml serve` against the same routes (--url: the port-forward path is the cluster's) -------------


def serve_url(iris_route: str) -> str:
    return iris_route.removesuffix("/serve/iris")


def serving_project(tmp_path, more_routes: str = ""):
    """A project (one server) whose piml.yaml serves the test model as route iris, plus `more_routes` (YAML lines)."""
    project = tmp_path / "lab"
    (project / "inventory").mkdir(parents=True)
    (project / "inventory" / "hosts.yml").write_text(
        "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1: {ansible_host: 10.0.0.1}\n"
    )
    routes = f"    iris: {{model: 'models:/{MODEL}@champion'}}\n" + more_routes
    (project / "piml.yaml").write_text(f"serve:\n  enabled: true\n  routes:\n{routes}")
    return project


def test_cli_predict_prints_the_models_own_predictions(piml, iris_route, served_model, tmp_path):
    frame = sample()
    rows = tmp_path / "rows.csv"
    rows.write_text(frame.to_csv(index=False))
    done = piml("serve", "predict", "iris", str(rows), "--url", serve_url(iris_route))
    assert done.returncode == 0, done.stderr
    expected = served_model.versions["1"].predict(frame).tolist()
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected
    assert done.stderr.strip() == f"iris: {MODEL} version 1"
    # JSON on stdin, --json: the whole answer, probabilities too
    body = json.dumps({"inputs": frame.values.tolist()})
    done = piml("serve", "predict", "iris", "-", "--url", serve_url(iris_route), "--json", input=body)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["predictions"] == expected and answer["version"] == "1"
    assert answer["probabilities"] == served_model.versions["1"].predict_proba(frame).tolist()


def test_cli_list_says_what_each_route_serves(piml, iris_route, tmp_path):
    project = serving_project(tmp_path, "    gone: {model: 'models:/nothing/1'}\n")
    done = piml("serve", "list", "-C", str(project), "--url", serve_url(iris_route), "--json")
    assert done.returncode == 1, done.stderr  # `gone` is not served
    rows = {r["route"]: r for r in json.loads(done.stdout)["routes"]}
    assert rows["iris"]["ok"] and rows["iris"]["version"] == "1" and rows["iris"]["model"] == MODEL
    assert (rows["iris"]["replicas"], rows["iris"]["replicas_on_version"]) == (2, 2)
    assert rows["gone"] == {**rows["gone"], "ok": False}
    assert done.stderr.strip() == (
        "error: route gone: is not served; add it to serve.routes in piml.yaml and run `piml up`"
    )


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("predict", "iris", "-"), '{"rows": [[1, 2]]}', "error: route iris: refused the input: "),
        (("predict", "nope", "-"), '{"inputs": [[1, 2, 3, 4]]}', "error: route nope: is not served; "),
        (("predict", "iris", "/nonexistent.csv"), None, "error: /nonexistent.csv: cannot read it (No such file"),
        (("predict", "iris", "-"), "  \n", "error: -: is empty; "),
    ],
    ids=["bad-rows", "unknown-route", "no-file", "empty"],
)
def test_cli_bad_input_is_one_line_and_exit_2(piml, iris_route, args, stdin, expected):
    done = piml("serve", *args, "--url", serve_url(iris_route), input=stdin)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [("reload", "iris"), ("predict", "iris", "-")], ids=["reload", "predict"])
def test_cli_needs_the_serving_token(piml, iris_route, tmp_path, monkeypatch, command):
    monkeypatch.delenv("PIML_SERVE_TOKEN")
    body = '{"inputs": [[1, 2, 3, 4]]}'
    done = piml("serve", *command, "--url", serve_url(iris_route), "-C", str(tmp_path), input=body)
    assert done.returncode == 2 and done.stderr.startswith("error: route iris: needs the serving token; run it in"), (
        done.stderr
    )
    monkeypatch.setenv("PIML_SERVE_TOKEN", "wrong")
    done = piml("serve", *command, "--url", serve_url(iris_route), input=body)
    assert done.returncode == 2 and done.stderr.startswith("error: route iris: refused the serving token"), done.stderr


def test_cli_on_a_dead_address_is_one_line_and_exit_1(piml):
    from tests.ports import free_port

    done = piml("serve", "predict", "iris", "-", "--url", f"http://127.0.0.1:{free_port()}", input='{"inputs": [[1]]}')
    assert done.returncode == 1 and done.stderr.startswith("error: route iris: no answer from http://127.0.0.1:"), (
        done.stderr
    )
    assert done.stderr.count("\n") == 1


def serving_head_on(plane, project, iris_route) -> None:
    """On the real control plane: a running pod with piml's serving-head label (placed by the real scheduler, made
    Running by the kubelet stand-in), whose port 8000 leads to the real Serve proxy; the project's kubeconfig is
    the plane's."""
    import shutil

    from tests.platform.test_port_forward import behind, running_pod

    (project / ".piml").mkdir(exist_ok=True)
    shutil.copy(plane.kubeconfig, project / ".piml" / "kubeconfig")
    (project / ".piml" / "kubeconfig").chmod(0o600)
    kube = plane.kube()
    try:
        running_pod(kube, "piml", "piml-serve-head-abcde", {"piml.io/component": "serve-head"})
    finally:
        kube.close()
    behind(plane, "piml", "piml-serve-head-abcde", 8000, int(serve_url(iris_route).rsplit(":", 1)[1]))


@pytest.fixture
def head_pod_gone(plane):
    yield
    kube = plane.kube()
    try:
        kube.request("DELETE", "/api/v1/namespaces/piml/pods/piml-serve-head-abcde", {"gracePeriodSeconds": "0"})
    finally:
        kube.close()
    (plane.dir / "forwards.json").unlink(missing_ok=True)


def test_cli_reaches_the_routes_through_a_port_forward(piml, plane, head_pod_gone, iris_route, served_model, tmp_path):
    """Without --url, piml forwards a loopback port to port 8000 of the serving head's pod through the REAL API
    server and the kubelet's own streaming code (tests/controlplane/modules/kubelet-streams), bridged to the
    real Serve proxy."""
    project = serving_project(tmp_path)
    serving_head_on(plane, project, iris_route)
    done = piml("serve", "list", "-C", str(project), "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["routes"]
    assert (row["route"], row["version"], row["replicas"]) == ("iris", "1", 2)
    body = json.dumps({"dataframe_split": sample().to_dict(orient="split")})
    done = piml("serve", "predict", "iris", "-", "-C", str(project), "--json", input=body)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"] == served_model.versions["1"].predict(sample()).tolist()


def test_piml_checks_reach_the_routes_through_a_port_forward_with_the_projects_token(
    plane, head_pod_gone, iris_route, tmp_path
):
    """What `piml check` opens (piml.health.connect): a port-forward to the serving head's pod by piml's label and
    the project's serve_token, through the real API server as above."""
    import os

    from piml.health.connect import open_cluster_endpoints
    from piml.health.probes import http_json
    from piml.project import ProjectPaths, load_cluster

    project = serving_project(tmp_path)
    (project / ".piml").mkdir()
    secrets_file = project / ".piml" / "secrets.yaml"
    secrets_file.write_text(f"serve_token: {SERVE_TOKEN}\n")
    os.chmod(secrets_file, 0o600)
    serving_head_on(plane, project, iris_route)
    with open_cluster_endpoints(load_cluster(ProjectPaths.resolve(project, None))) as endpoints:
        assert endpoints.serve_url and "serve" not in endpoints.unreachable, endpoints.unreachable
        status, info = http_json("GET", f"{endpoints.serve_url}/serve/iris/", bearer=endpoints.serve_token)
    assert (status, info["route"], info["version"]) == (200, "iris", "1"), info


@pytest.mark.parametrize(("path", "body"), [("/", None), ("/predict", b'{"inputs": [[1, 2, 3, 4]]}'), ("/reload", b"")])
def test_every_request_needs_the_serving_token(iris_route, path, body):
    """The proxy checks nothing and the ingress puts the route on the LAN: the app refuses before any work."""
    for given in ("", "Bearer wrong", f"Basic {SERVE_TOKEN}x", SERVE_TOKEN[:-1]):
        status, answer = call(f"{iris_route}{path}", body, Authorization=given)
        assert (status, answer) == (401, {"error": "needs the serving token (Authorization: Bearer ...)"}), given


def test_reload_switches_every_replica_without_a_failed_request(serve_head, iris_route, served_model):
    """Version 2 (a RandomForest) registered and the alias moved: /reload answers once both replicas serve it,
    while requests sent all along never fail and each is answered whole by one version."""
    import threading

    from sklearn.ensemble import RandomForestClassifier

    frame = sample()
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    expected = {v: m.predict_proba(frame).tolist() for v, m in served_model.versions.items()}
    forest = RandomForestClassifier(n_estimators=20, random_state=0)
    version = served_model.register(forest, trusted=("sklearn.tree._tree.Tree",))  # as MLflow 3 asks for trees
    expected[version] = served_model.versions[version].predict_proba(frame).tolist()
    served_model.alias(version)
    answers: list = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set() and len(answers) < 5000:  # bounded either way
            answers.append(call(f"{iris_route}/predict", body))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        status, reloaded = call(f"{iris_route}/reload", b"")
        after = [call(f"{iris_route}/predict", body) for _ in range(10)]
    finally:
        stop.set()
        sender.join(60)
    assert status == 200, (reloaded, serve_head.replica_log())
    assert reloaded == {"route": "iris", "model": MODEL, "version": version, "replicas": 2}, serve_head.replica_log()
    assert [a for s, a in answers + after if s != 200] == [], serve_head.replica_log()
    assert len(answers) > 10  # the switch happened under traffic
    for _, answer in answers + after:  # each answer is one version's, whole
        assert answer["probabilities"] == expected[answer["version"]]
    assert {a["version"] for _, a in after} == {version}  # both replicas (Serve spreads the ten over them)


def test_cli_reload_after_the_switch_says_what_serves(piml, iris_route, served_model):
    """After the reload above: `piml serve reload` with the project's token is idempotent and says so."""
    version = max(served_model.versions, key=int)
    done = piml("serve", "reload", "iris", "--url", serve_url(iris_route))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"iris: serving {MODEL} version {version} on 2 replica(s)"


def test_a_reload_that_cannot_load_is_a_502_with_one_line_and_the_route_keeps_serving(iris_route, served_model):
    """The alias gone: /reload answers the route's own 502 with MLflow's reason (HAProxy, in front, passes a
    replica's 502 as it is; only its own errors become Serve's 500), and the version loaded still answers."""
    import mlflow

    client, version = mlflow.MlflowClient(), max(served_model.versions, key=int)
    client.delete_registered_model_alias(MODEL, "champion")
    try:
        status, answer = call(f"{iris_route}/reload", b"")
    finally:
        served_model.alias(version)
    assert status == 502, answer
    assert answer["error"].startswith(f"cannot load models:/{MODEL}@champion: ") and "\n" not in answer["error"]
    status, answer = call(
        f"{iris_route}/predict", json.dumps({"dataframe_split": sample().to_dict(orient="split")}).encode()
    )
    assert status == 200 and answer["version"] == version, answer


def test_a_route_scales_from_one_replica_to_two_under_load_and_back(serve_head, iris_route, served_model):
    """Serve's autoscaler on piml's rendered autoscaling_config (min 1, max 2, target from the batch size): steady
    concurrent requests bring a second replica, and it goes once they stop. Only the delays are shortened here
    (Serve's defaults wait 30 s to add and 600 s to remove)."""
    import threading
    import time

    route = "iris-auto"
    config = serve_config(serve_head, route, f"models:/{MODEL}@champion")
    (app,) = [a for a in config["applications"] if a["name"] == route]  # beside it: the deep check's route
    autoscaling = app["deployments"][0]["autoscaling_config"]
    autoscaling.update(min_replicas=1, max_replicas=2)
    autoscaling.update(upscale_delay_s=2, downscale_delay_s=5, metrics_interval_s=0.5, look_back_period_s=2)
    # deployed beside iris (and the check's route): `serve deploy` replaces the whole config, so they go along
    iris = serve_config(serve_head, "iris", f"models:/{MODEL}@champion")["applications"]
    serve_head.deploy({**config, "applications": iris + [app]})
    url = f"{serve_head.serve_url}/serve/{route}"

    def replicas() -> int:
        return get(f"{url}/")["replicas"]

    assert replicas() == 1
    body = json.dumps({"dataframe_split": sample().to_dict(orient="split")}).encode()
    stop, failed = threading.Event(), []

    def client():
        for _ in range(20000):  # bounded either way
            if stop.is_set():
                return
            status, answer = call(f"{url}/predict", body)
            if status != 200:
                failed.append(answer)

    senders = [threading.Thread(target=client) for _ in range(24)]
    for sender in senders:
        sender.start()
    try:
        deadline = time.monotonic() + 90
        while replicas() < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert replicas() == 2, serve_head.replica_log()
    finally:
        stop.set()
        for sender in senders:
            sender.join(60)
    assert failed == []
    deadline = time.monotonic() + 90
    while replicas() > 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert replicas() == 1
