"""MLflow on the user's own stores (issue 10): an external PostgreSQL and external S3, their secrets only in Secrets."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from piml.errors import InputError
from piml.plan import make_plan
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.render.test_render import HERE, K8S_VERSION, cluster_for

PASSWORD = "db p@ss:w/rd%"  # characters a URI must escape
S3_KEY, S3_SECRET = "AKIAUSERKEY0000", "user-s3-secret-key-0000"
EXTERNAL = {
    "mlflow": {
        "backend_uri": "postgresql://mlflow@db.lan:5432/mlflow",
        "artifacts": "s3",
        "artifacts_uri": "s3://ml-artifacts/piml",
        "s3_endpoint_url": "http://nas.lan:3900",
        "s3_region": "garage",
    }
}


@pytest.fixture
def user_secrets(tmp_path, monkeypatch):
    """The user's own secrets in .piml/secrets.yaml, as the docs say to add them; none in the environment."""
    for variable in ("PIML_MLFLOW_BACKEND_PASSWORD", "PIML_MLFLOW_S3_ACCESS_KEY", "PIML_MLFLOW_S3_SECRET_KEY"):
        monkeypatch.delenv(variable, raising=False)
    state = tmp_path / ".piml"
    state.mkdir()
    (state / "secrets.yaml").write_text(
        yaml.safe_dump(
            {"mlflow_backend_password": PASSWORD, "mlflow_s3_access_key": S3_KEY, "mlflow_s3_secret_key": S3_SECRET}
        )
    )
    return load_or_create(state)


def _mlflow(tmp_path, settings, secrets):
    cluster = cluster_for("pi5-3x8gb", tmp_path, settings)
    objects = [
        o for r in render_platform(cluster, make_plan(cluster), secrets) if r.component == "mlflow" for o in r.objects
    ]
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    container = by_kind["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]
    return objects, by_kind.get(("Secret", "mlflow")), container


def _env(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_external_backend_uri_only_in_the_secret(tmp_path, user_secrets):
    objects, secret, container = _mlflow(tmp_path, EXTERNAL, user_secrets)
    full = "postgresql://mlflow:db%20p%40ss%3Aw%2Frd%25@db.lan:5432/mlflow"
    assert secret["stringData"]["backend-store-uri"] == full
    # The Deployment names it only by reference: Kubernetes expands $(VAR) in args from the container's env.
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
    assert _env(container)["MLFLOW_BACKEND_STORE_URI"] == {
        "secretKeyRef": {"name": "mlflow", "key": "backend-store-uri"}
    }
    outside = json.dumps([o for o in objects if o["kind"] != "Secret"])
    for value in (full, "db.lan", PASSWORD, "p%40ss"):
        assert value not in outside, value
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_external_s3_uses_the_users_keys_and_endpoint(tmp_path, user_secrets):
    objects, secret, container = _mlflow(tmp_path, EXTERNAL, user_secrets)
    # The user's keys, never piml's generated MinIO ones (there is no MinIO here).
    assert (secret["stringData"]["s3-access-key"], secret["stringData"]["s3-secret-key"]) == (S3_KEY, S3_SECRET)
    assert user_secrets["minio_access_key"] not in json.dumps(objects)
    env = _env(container)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "mlflow", "key": "s3-access-key"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "mlflow", "key": "s3-secret-key"}}
    assert (env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_DEFAULT_REGION"]) == ("http://nas.lan:3900", "garage")
    assert "--artifacts-destination=s3://ml-artifacts/piml" in container["args"]
    assert not any(o["metadata"]["name"].startswith("mlflow-minio") for o in objects)
    outside = json.dumps([o for o in objects if o["kind"] != "Secret"])
    assert S3_KEY not in outside and S3_SECRET not in outside


def test_aws_s3_has_no_endpoint_or_region(tmp_path, user_secrets):
    settings = {"mlflow": {"artifacts": "s3", "artifacts_uri": "s3://ml-artifacts"}}
    _, _, container = _mlflow(tmp_path, settings, user_secrets)
    env = _env(container)
    assert (
        "MLFLOW_S3_ENDPOINT_URL" not in env
        and "AWS_DEFAULT_REGION" not in env
        and "MLFLOW_BACKEND_STORE_URI" not in env
    )
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in container["args"]


def test_environment_overrides_the_secrets_file(tmp_path, user_secrets, monkeypatch):
    monkeypatch.setenv("PIML_MLFLOW_BACKEND_PASSWORD", "from-env")
    monkeypatch.setenv("PIML_MLFLOW_S3_SECRET_KEY", "env-s3-secret")
    _, secret, _ = _mlflow(tmp_path, EXTERNAL, load_or_create(tmp_path / ".piml"))
    assert secret["stringData"]["backend-store-uri"] == "postgresql://mlflow:from-env@db.lan:5432/mlflow"
    assert (secret["stringData"]["s3-access-key"], secret["stringData"]["s3-secret-key"]) == (S3_KEY, "env-s3-secret")
    assert "from-env" not in (tmp_path / ".piml" / "secrets.yaml").read_text()  # used, never stored


def test_backend_without_a_password_is_used_as_written(tmp_path, monkeypatch):
    monkeypatch.delenv("PIML_MLFLOW_BACKEND_PASSWORD", raising=False)
    settings = {"mlflow": {"backend_uri": "postgresql://mlflow@db.lan/mlflow?sslmode=require"}}
    _, secret, _ = _mlflow(tmp_path, settings, load_or_create(tmp_path / ".piml"))
    assert secret["stringData"]["backend-store-uri"] == "postgresql://mlflow@db.lan/mlflow?sslmode=require"


def test_external_s3_without_keys_says_where_to_put_them(tmp_path, monkeypatch):
    for variable in ("PIML_MLFLOW_S3_ACCESS_KEY", "PIML_MLFLOW_S3_SECRET_KEY"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(InputError) as info:
        _mlflow(tmp_path, EXTERNAL, load_or_create(tmp_path / ".piml"))
    text = str(info.value)
    assert "mlflow_s3_access_key" in text and "$PIML_MLFLOW_S3_SECRET_KEY" in text and "secrets.yaml" in text
    assert len(info.value.problems) == 1 and "\n" not in text
    _mlflow(tmp_path, EXTERNAL, None)  # without secret values (piml render) there is nothing to miss


def test_piml_render_never_prints_the_users_secrets(piml, tmp_path, monkeypatch):
    monkeypatch.setenv("PIML_MLFLOW_BACKEND_PASSWORD", PASSWORD)
    monkeypatch.setenv("PIML_MLFLOW_S3_ACCESS_KEY", S3_KEY)
    monkeypatch.setenv("PIML_MLFLOW_S3_SECRET_KEY", S3_SECRET)
    (tmp_path / "piml.yaml").write_text(yaml.safe_dump(EXTERNAL))
    inventory = str(HERE / "scenarios" / "pi5-3x8gb.yml")
    out = piml("render", "-i", inventory, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "$(MLFLOW_BACKEND_STORE_URI)" in out.stdout
    for value in ("db.lan", "p%40ss", PASSWORD, S3_KEY, S3_SECRET):
        assert value not in out.stdout + out.stderr, value
    out = piml("render", "-i", inventory, "--out", "files", "--include-secrets", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "files" / "01-mlflow.yaml").read_text()
    assert "postgresql://mlflow:db%20p%40ss%3Aw%2Frd%25@db.lan:5432/mlflow" in text and S3_SECRET in text
    assert PASSWORD not in out.stdout + out.stderr


def test_s3_without_a_bucket_is_refused_before_anything(piml, tmp_path):
    (tmp_path / "piml.yaml").write_text("mlflow:\n  enabled: true\n  artifacts: s3\n")
    out = piml("render", "-i", str(HERE / "scenarios" / "pi5-3x8gb.yml"), cwd=tmp_path)
    assert out.returncode == 2 and not out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "piml.yaml:3: 'mlflow.artifacts' is 's3' but no bucket is named; "
        "add artifacts_uri: s3://BUCKET[/PATH] (and s3_endpoint_url for a store other than AWS)"
    ), lines
    assert "None" not in out.stderr
