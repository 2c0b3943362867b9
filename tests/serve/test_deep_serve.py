"""`piml check --deep`'s serving step on real programs: the Ray job (submitted through the head's Jobs API, as the
check does) trains and registers `piml-check` in a real MLflow server with basic auth; the route `piml-check` that
piml renders beside the users' routes (no replica until asked) reloads to that version and answers the job's rows;
the check compares them with the job's own model.predict."""

from __future__ import annotations

import pytest

from piml.config import PimlConfig
from piml.health.deep import Deadline, deep_checks, served_predictions
from piml.health.endpoints import Endpoints
from piml.health.result import CheckFailed
from piml.serve import apps
from tests.health.helpers import rows_text
from tests.serve.conftest import MODEL, SERVE_TOKEN, iris

SETTINGS = {
    "dask": {"enabled": False},
    "queue": {"enabled": False},
    "serve": {"enabled": True, "pip": [], "routes": {"iris": {"model": f"models:/{MODEL}@champion"}}},
}


@pytest.fixture(scope="module")
def checked(serve_head, served_model, mlflow_server):
    """The rendered serving config deployed (only the HTTP proxy where the test says), then the deep checks run."""
    config = PimlConfig.model_validate(SETTINGS)
    rendered = apps.serve_config(config)
    port = int(serve_head.serve_url.rsplit(":", 1)[1])
    serve_head.deploy({**rendered, "http_options": {"host": "127.0.0.1", "port": port}})
    endpoints = Endpoints(
        mlflow_url=mlflow_server.url,
        mlflow_user=mlflow_server.username,
        mlflow_password=mlflow_server.password,
        ray_dashboard_url=serve_head.dashboard_url,
        ray_token=serve_head.env["RAY_AUTH_TOKEN"],
        serve_url=serve_head.serve_url,
        serve_token=SERVE_TOKEN,
    )
    return config, endpoints, deep_checks(endpoints, config, ray_pip=[], timeout=300)


def test_the_check_serves_the_model_it_registered_and_the_answers_are_the_models_own(checked, serve_head):
    _, _, rows = checked
    assert [(r.target, r.status) for r in rows] == [("ray", "pass"), ("serve", "pass")], (
        rows_text(rows) + serve_head.replica_log()
    )
    version = rows[0].detail.split("registered piml-check version ")[1].split()[0]
    assert rows[1].detail.startswith(f"route piml-check served piml-check version {version} (ready in ")
    assert rows[1].detail.endswith("its 150 predictions equal model.predict's on the same rows")


def trained_by_the_job(endpoints) -> dict:
    """What the Ray step handed on, read back: the model's rows and predictions as the job printed them."""
    import mlflow

    version = max(int(v.version) for v in mlflow.MlflowClient().search_model_versions("name = 'piml-check'"))
    model = mlflow.sklearn.load_model(f"models:/piml-check/{version}")
    features = iris()[0]  # the job's own columns (deep_ray_job.train renames them the same way)
    return {
        "version": str(version),
        "columns": list(features.columns),
        "data": features.values.tolist(),
        "predictions": model.predict(features).tolist(),
    }


def test_an_answer_that_is_not_the_models_own_fails_naming_the_row(checked):
    config, endpoints, _ = checked
    trained = trained_by_the_job(endpoints)
    trained["predictions"][7] = 2 if trained["predictions"][7] != 2 else 0
    with pytest.raises(CheckFailed) as failed:
        served_predictions(endpoints, config, trained, None, Deadline(120))
    assert failed.value.detail.startswith("route piml-check differs from the model's own answer at row 7: ")


def test_a_wrong_serving_token_fails_with_the_routes_own_reason(checked):
    config, endpoints, _ = checked
    endpoints = Endpoints(serve_url=endpoints.serve_url, serve_token="wrong")
    with pytest.raises(CheckFailed) as failed:
        served_predictions(endpoints, config, trained_by_the_job(endpoints), None, Deadline(60))
    assert failed.value.detail == (
        "POST /serve/piml-check/reload answered HTTP 401: needs the serving token (Authorization: Bearer ...)"
    )
