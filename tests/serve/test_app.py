"""piml's Ray Serve application (piml/serve/app.py) on a real Ray Serve, serving a model registered in a real
MLflow server with basic auth: its answers are the model's own, and a bad request is a 400 with one line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.services import MODEL_NAME


def serve_config(head, route: str, model: str, batch_size: int = 8) -> dict:
    """What the RayService's serveConfigV2 will carry for one route (piml renders it; #12)."""
    port = int(head.serve_url.rsplit(":", 1)[1])
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": route,
                "route_prefix": f"/serve/{route}",
                "import_path": "piml.serve.app:build",
                "args": {"route": route, "model": model, "batch_size": batch_size},
                "deployments": [{"name": "model", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}],
            }
        ],
    }


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, {"error": text}


@pytest.fixture(scope="module")
def iris_route(serve_head, registered_model):
    serve_head.deploy(serve_config(serve_head, "iris", registered_model.alias_uri))
    return f"{serve_head.serve_url}/serve/iris"


def rows():
    from sklearn.datasets import load_iris

    return load_iris(as_frame=True).data.to_numpy()[::10]


def test_predictions_are_the_models_own(iris_route, registered_model):
    import pandas as pd

    frame = pd.DataFrame(rows(), columns=registered_model.features)
    expected = registered_model.sklearn.predict(frame).tolist()
    probabilities = registered_model.sklearn.predict_proba(frame).tolist()
    bodies = {
        "dataframe_split": json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode(),
        "dataframe_records": json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode(),
        "csv": frame.to_csv(index=False).encode(),
    }
    for name, body in bodies.items():
        status, answer = post(f"{iris_route}/predict", body, "text/csv" if name == "csv" else "application/json")
        assert status == 200, (name, answer)
        assert answer["predictions"] == expected, name
        assert answer["probabilities"] == probabilities, name  # JSON carries floats exactly
        assert (answer["model"], answer["version"]) == (MODEL_NAME, "1"), name


def test_info_names_the_version_loaded(iris_route):
    with urllib.request.urlopen(f"{iris_route}/", timeout=10) as response:
        info = json.load(response)
    assert info["route"] == "iris" and info["model"] == MODEL_NAME and info["version"] == "1"
    assert info["uri"] == f"models:/{MODEL_NAME}@champion" and info["since"].endswith("Z")


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
    status, answer = post(f"{iris_route}/predict", body, content_type)
    assert status == 400, answer
    assert reason in answer["error"] and "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_requests_together_are_answered_each_with_its_own_rows(serve_head, iris_route, registered_model):
    """Concurrent requests are batched into one model call; each still gets exactly its rows' predictions."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    frame = pd.DataFrame(rows(), columns=registered_model.features)
    singles = [frame.iloc[[i]] for i in range(len(frame))]
    bodies = [json.dumps({"dataframe_split": s.to_dict(orient="split")}).encode() for s in singles]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(f"{iris_route}/predict", b), bodies))
    assert [a for s, a in answers if s != 200] == [], serve_head.replica_log()
    assert [a["predictions"] for _, a in answers] == [registered_model.sklearn.predict(s).tolist() for s in singles]
