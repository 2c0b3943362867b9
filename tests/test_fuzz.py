"""No input, however odd, gets anything but an InputError out of the parsers."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml.config import parse_config
from piml.errors import InputError
from piml.inventory.validate import parse_inventory_text
from piml.scaffold import parse_node_spec
from piml.yamlsrc import parse_yaml

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["pi5", "cm4", "arm64", "{{ x }}", "10.0.0.1", "server"]))
keys = st.one_of(st.text(max_size=15), st.sampled_from([
    "k3s_cluster", "children", "server", "agent", "hosts", "vars", "ray_external", "all", "ansible_host",
    "ansible_port", "ansible_user", "piml_model", "piml_arch", "piml_labels", "piml_taints", "piml_memory_gb",
    "piml_storage", "server_config_yaml", "ansible_ssh_private_key_file", "mlflow", "ray", "queue", "k3s",
    "version", "enabled", "kind", "resources", "limits", "memory", "pi1", "pi2"]))
# MLflow's store settings (issue 10): URIs near and far from valid, some with a password that must never be echoed.
PASSWORD = "hunter2"
uris = st.one_of(st.text(max_size=40), st.builds(
    lambda scheme, user, host, port, path: f"{scheme}{user}{host}{port}{path}",
    st.sampled_from(["postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://", "mysql://", "s3://", "http://", "https://", "", "s3:/"]),
    st.sampled_from(["", "mlflow@", f"mlflow:{PASSWORD}@", f":{PASSWORD}@", "a b@"]),
    st.sampled_from(["db.lan", "Bucket", "nas", "[::1]", "[fe80::", "10.0.0.5", "", "b"]),
    st.sampled_from(["", ":5432", ":99999", ":x", ":0"]),
    st.sampled_from(["", "/", "/mlflow", "/a b", f"/db?password={PASSWORD}", "?x=1", "#f", "/\n"])))
mlflow_settings = st.fixed_dictionaries({}, optional={
    "backend": st.sampled_from(["sqlite", "postgresql", "mysql"]), "backend_uri": st.one_of(st.none(), uris),
    "artifacts": st.sampled_from(["pvc", "minio", "s3", "S3"]), "artifacts_uri": st.one_of(st.none(), uris),
    "s3_endpoint_url": st.one_of(st.none(), uris), "s3_region": st.one_of(st.none(), st.text(max_size=12), st.just("garage")),
    "enabled": st.booleans()})
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=40)


def _accepts_or_input_error(parse, text):
    try:
        parse(text)
    except InputError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)


def _inventory(text):
    return parse_inventory_text(text, "hosts.yml", __import__("pathlib").Path("/tmp/x/hosts.yml"))


def _config(text):
    return parse_config(parse_yaml(text, "piml.yaml"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_inventories(doc):
    _accepts_or_input_error(_inventory, yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(documents)
def test_structured_configs(doc):
    _accepts_or_input_error(_config, yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_raw_text(text):
    _accepts_or_input_error(_inventory, text)
    _accepts_or_input_error(_config, text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_node_specs(text):
    _accepts_or_input_error(parse_node_spec, text)


@settings(max_examples=400, deadline=None)
@given(mlflow_settings)
def test_mlflow_store_settings(mlflow):
    """One line per problem, and a password in a URI never shows up in one."""
    try:
        _config(yaml.safe_dump({"mlflow": mlflow}))
    except InputError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert str(problem) and "\n" not in str(problem) and str(problem).startswith("piml.yaml:")
            if "backend_uri" in str(problem):
                assert PASSWORD not in str(problem)
