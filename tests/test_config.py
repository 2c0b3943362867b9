import pytest

from piml.config import PimlConfig, commented_defaults, load_config, parse_config
from piml.errors import InputError
from piml.yamlsrc import parse_yaml


def test_empty_and_missing_files_are_the_defaults(tmp_path):
    (tmp_path / "piml.yaml").write_text("")
    assert load_config(tmp_path / "piml.yaml") == PimlConfig()
    assert load_config(tmp_path / "absent.yaml") == PimlConfig()


def test_commented_defaults_uncommented_are_the_defaults():
    text = "\n".join(
        line[2:]
        for line in commented_defaults().splitlines()
        if line.startswith("# ")
        and ":" in line
        and not line.startswith("# piml")
        and not line.startswith("# uncomment")
    )
    # the mappings' example entries (serve.routes.iris) come along, switched off with their block
    from piml.config import MAPPING_EXAMPLES

    key, example = MAPPING_EXAMPLES["routes"]
    expected = PimlConfig.model_validate({"serve": {"routes": {key: example.model_dump()}}})
    assert parse_config(parse_yaml(text, "piml.yaml")) == expected
    assert not expected.serve.enabled


def test_settings_are_read():
    cfg = parse_config(
        parse_yaml(
            "queue: {kind: rabbitmq, retries: 5}\nray: {enabled: false}\nmlflow:\n  resources: {limits: {memory: 1Gi}}\n",
            "p",
        )
    )
    assert (cfg.queue.kind, cfg.queue.retries, cfg.ray.enabled) == ("rabbitmq", 5, False)
    assert cfg.mlflow.resources.limits.memory == "1Gi"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlflw: {}\n", "piml.yaml:1: unknown setting 'mlflw'; did you mean 'mlflow'?"),
        ("ray:\n  enabled: true\n  workers: 3\n", "piml.yaml:3: unknown setting 'ray.workers'; did you mean 'worker'?"),
        ("mlflow:\n  backend: mysql\n", "piml.yaml:2: 'mlflow.backend' is 'mysql'; use 'sqlite' or 'postgresql'"),
        (
            "ray:\n  version: latest\n",
            "piml.yaml:2: 'ray.version' is 'latest', not a valid value; write it like '2.60.0'",
        ),
        ("k3s:\n  version: 1.2\n", "piml.yaml:2: 'k3s.version' must be text, not 1.2; put the value in quotes"),
        (
            "mlflow:\n  ui_hosts: [Pi1.LAN:80]\n",
            "piml.yaml:2: 'mlflow.ui_hosts[0]' is 'Pi1.LAN:80', not a valid value; "
            "write it as a lower-case DNS name or IPv4 address, without a port or scheme",
        ),
        ("queue: 5\n", "piml.yaml:1: 'queue' must be a mapping of settings"),
        ("dask:\n  worker:\n    limits: {memory: lots}\n", "piml.yaml:3: 'dask.worker.limits.memory' is 'lots'"),
        ("- a\n", "piml.yaml:1: piml.yaml must be a mapping"),
        # MLflow's own stores (issue 10)
        (
            "mlflow:\n  enabled: true\n  artifacts: s3\n",
            "piml.yaml:3: 'mlflow.artifacts' is 's3' but no bucket is named; add artifacts_uri: s3://BUCKET[/PATH]",
        ),
        (
            "mlflow:\n  artifacts: s3\n  artifacts_uri: https://bucket\n",
            "piml.yaml:3: 'mlflow.artifacts_uri' is not an s3://BUCKET[/PATH] URI; write it like s3://mlflow/artifacts",
        ),
        (
            "mlflow:\n  artifacts: minio\n  artifacts_uri: s3://mine\n",
            "piml.yaml:3: 'mlflow.artifacts_uri' is only used with artifacts: s3, not 'minio'",
        ),
        (
            "mlflow:\n  s3_endpoint_url: http://nas.lan:9000\n",
            "piml.yaml:2: 'mlflow.s3_endpoint_url' is only used with artifacts: s3, not 'pvc'; set artifacts: s3, or remove s3_endpoint_url",
        ),
        (
            "mlflow:\n  artifacts: s3\n  artifacts_uri: s3://b0b\n  s3_endpoint_url: nas.lan:9000\n",
            "piml.yaml:4: 'mlflow.s3_endpoint_url' is not an http(s)://HOST[:PORT] URL; write it like http://nas.lan:9000",
        ),
        (
            "mlflow:\n  artifacts: s3\n  artifacts_uri: s3://b0b\n  s3_endpoint_url: http://key:secret@nas.lan:9000\n",
            "piml.yaml:4: 'mlflow.s3_endpoint_url' has credentials in it; remove them (the keys go in .piml/secrets.yaml",
        ),
        (
            "mlflow:\n  artifacts: s3\n  artifacts_uri: s3://b0b\n  s3_region: Not A Region\n",
            "piml.yaml:4: 'mlflow.s3_region' is 'Not A Region', not a valid value",
        ),
        (
            "mlflow:\n  backend_uri: mysql://mlflow@db/mlflow\n",
            "piml.yaml:2: 'mlflow.backend_uri' is not a postgresql://USER@HOST[:PORT]/DB URI",
        ),
        (
            "mlflow:\n  backend_uri: postgresql+psycopg2://mlflow@db/mlflow\n",  # no psycopg2 in the image
            "piml.yaml:2: 'mlflow.backend_uri' is not a postgresql://USER@HOST[:PORT]/DB URI",
        ),
        (
            "mlflow:\n  backend_uri: postgresql://mlflow@db.lan:99999/mlflow\n",
            "piml.yaml:2: 'mlflow.backend_uri' is not a postgresql://USER@HOST[:PORT]/DB URI",
        ),
        # serve: (#12)
        (
            "serve: {enabled: true}\n",
            "piml.yaml:1: 'serve.enabled' is true but no route is given; add one, e.g. `routes: {iris: {model: ",
        ),
        (
            "ray: {enabled: false}\nserve:\n  enabled: true\n  routes: {iris: {model: 'models:/iris/1'}}\n",
            "piml.yaml:3: 'serve.enabled' needs ray (KubeRay runs the serving), and ray.enabled is false; "
            "set ray.enabled: true, or serve.enabled: false",
        ),
        (
            "serve:\n  routes:\n    Iris: {model: 'models:/iris/1'}\n",
            "piml.yaml:3: 'serve.routes' has the name 'Iris', not a valid one; "
            "write it in lower-case letters, digits and '-', at most 30, e.g. iris",
        ),
        (
            "serve:\n  routes:\n    piml-check: {model: 'models:/iris/1'}\n",
            "piml.yaml:2: 'serve.routes.piml-check' is piml's own route (`piml check --deep` serves its model "
            "there); give the route another name",
        ),
        (
            "serve:\n  routes:\n    iris: {max_replicas: 2}\n",
            "piml.yaml:3: 'serve.routes.iris' has no 'model'; "
            "add model (the registered model, e.g. models:/iris@champion)",
        ),
        (
            "serve:\n  routes:\n    iris:\n      modle: x\n",
            "piml.yaml:4: unknown setting 'serve.routes.iris.modle'; did you mean 'model'?",
        ),
        (
            "serve:\n  routes:\n    iris: {model: 'models:/iris'}\n",
            "piml.yaml:3: 'serve.routes.iris.model' is 'models:/iris', not a valid value; "
            "write it as models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest",
        ),
        (
            "serve:\n  routes:\n    iris: {model: 'models:/i/2', min_replicas: 3}\n",
            "piml.yaml:3: serve.routes.iris: min_replicas 3 is above max_replicas 2; "
            "lower min_replicas or raise max_replicas to at least 3",
        ),
    ],
)
def test_errors_name_line_and_fix(text, expected):
    with pytest.raises(InputError) as info:
        parse_config(parse_yaml(text, "piml.yaml"))
    assert any(str(p).startswith(expected) for p in info.value.problems), info.value.problems


def test_all_errors_at_once_in_line_order():
    with pytest.raises(InputError) as info:
        parse_config(parse_yaml("queue:\n  kind: kafka\nmlflow:\n  backend: mysql\nbogus: 1\n", "piml.yaml"))
    assert [p.where for p in info.value.problems] == ["piml.yaml:2", "piml.yaml:4", "piml.yaml:5"]


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://mlflow:hunter2@db.lan/mlflow",
        "postgresql://db.lan/mlflow?user=m&password=hunter2",
        "mysql://mlflow:hunter2@db.lan/mlflow",
        "postgresql://mlflow:hunter2@db.lan:70000/mlflow",
    ],
)
def test_a_password_in_backend_uri_is_refused_and_never_echoed(uri):
    with pytest.raises(InputError) as info:
        parse_config(parse_yaml(f"mlflow:\n  backend: postgresql\n  backend_uri: {uri}\n", "piml.yaml"))
    text = str(info.value)
    assert text.startswith("piml.yaml:3: 'mlflow.backend_uri' ") and "\n" not in text
    assert "hunter2" not in text
    if uri.startswith("postgresql://") and ("hunter2@db.lan/" in uri or "password=" in uri):
        assert (
            "has a password in it" in text
            and "mlflow_backend_password" in text
            and "PIML_MLFLOW_BACKEND_PASSWORD" in text
        )


def test_external_stores_are_read():
    cfg = parse_config(
        parse_yaml(
            "mlflow:\n  backend_uri: postgresql+psycopg://mlflow@db.lan:5432/mlflow?sslmode=require\n  artifacts: s3\n"
            "  artifacts_uri: s3://ml-artifacts/piml\n  s3_endpoint_url: https://[fd00::5]:3900/\n  s3_region: garage\n",
            "p",
        )
    )
    assert (
        cfg.mlflow.backend_uri.endswith("?sslmode=require") and cfg.mlflow.s3_endpoint_url == "https://[fd00::5]:3900/"
    )
    assert (cfg.mlflow.artifacts_uri, cfg.mlflow.s3_region) == ("s3://ml-artifacts/piml", "garage")
