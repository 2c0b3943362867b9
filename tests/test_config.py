import pytest

from piml.config import PimlConfig, commented_defaults, load_config, parse_config
from piml.errors import InputError
from piml.yamlsrc import parse_yaml


def test_empty_and_missing_files_are_the_defaults(tmp_path):
    (tmp_path / "piml.yaml").write_text("")
    assert load_config(tmp_path / "piml.yaml") == PimlConfig()
    assert load_config(tmp_path / "absent.yaml") == PimlConfig()


def test_commented_defaults_uncommented_are_the_defaults():
    text = "\n".join(line[2:] for line in commented_defaults().splitlines() if line.startswith("# ") and ":" in line and not line.startswith("# piml") and not line.startswith("# uncomment"))
    assert parse_config(parse_yaml(text, "piml.yaml")) == PimlConfig()


def test_settings_are_read():
    cfg = parse_config(parse_yaml("queue: {kind: rabbitmq, retries: 5}\nray: {enabled: false}\nmlflow:\n  resources: {limits: {memory: 1Gi}}\n", "p"))
    assert (cfg.queue.kind, cfg.queue.retries, cfg.ray.enabled) == ("rabbitmq", 5, False)
    assert cfg.mlflow.resources.limits.memory == "1Gi"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlflw: {}\n", "piml.yaml:1: unknown setting 'mlflw'; did you mean 'mlflow'?"),
        ("ray:\n  enabled: true\n  workers: 3\n", "piml.yaml:3: unknown setting 'ray.workers'; did you mean 'worker'?"),
        ("mlflow:\n  backend: mysql\n", "piml.yaml:2: 'mlflow.backend' is 'mysql'; use 'sqlite' or 'postgresql'"),
        ("ray:\n  version: latest\n", "piml.yaml:2: 'ray.version' is 'latest', not a valid value; write it like '2.60.0'"),
        ("k3s:\n  version: 1.2\n", "piml.yaml:2: 'k3s.version' must be text, not 1.2; put the value in quotes"),
        ("queue: 5\n", "piml.yaml:1: 'queue' must be a mapping of settings"),
        ("dask:\n  worker:\n    limits: {memory: lots}\n", "piml.yaml:3: 'dask.worker.limits.memory' is 'lots'"),
        ("- a\n", "piml.yaml:1: piml.yaml must be a mapping"),
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
