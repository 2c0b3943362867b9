"""No input, however odd, gets anything but an InputError out of the parsers."""

import os
import resource
import signal
from contextlib import contextmanager

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from piml.config import parse_config
from piml.errors import InputError
from piml.inventory.validate import parse_inventory_text
from piml.scaffold import parse_node_spec
from piml.yamlsrc import parse_yaml
from tests.fuzzing import examples

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["pi5", "cm4", "arm64", "{{ x }}", "10.0.0.1", "server", "v1.36.3+k3s1", "6443", 1.3]),
)
keys = st.one_of(
    st.text(max_size=15),
    st.sampled_from(
        [
            "k3s_cluster",
            "children",
            "server",
            "agent",
            "hosts",
            "vars",
            "ray_external",
            "all",
            "ansible_host",
            "ansible_port",
            "ansible_user",
            "piml_model",
            "piml_arch",
            "piml_labels",
            "piml_taints",
            "piml_memory_gb",
            "piml_storage",
            "server_config_yaml",
            "ansible_ssh_private_key_file",
            "k3s_version",
            "api_port",
            "token",
            "api_endpoint",
            "airgap_dir",
            "extra_server_args",
            "mlflow",
            "ray",
            "queue",
            "k3s",
            "version",
            "enabled",
            "kind",
            "resources",
            "limits",
            "memory",
            "pi1",
            "pi2",
        ]
    ),
)
# MLflow's store settings (issue 10): URIs near and far from valid, some with a password that must never be echoed.
PASSWORD = "hunter2"
uris = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda scheme, user, host, port, path: f"{scheme}{user}{host}{port}{path}",
        st.sampled_from(
            [
                "postgresql://",
                "postgresql+psycopg://",
                "postgresql+psycopg2://",
                "mysql://",
                "s3://",
                "http://",
                "https://",
                "",
                "s3:/",
            ]
        ),
        st.sampled_from(["", "mlflow@", f"mlflow:{PASSWORD}@", f":{PASSWORD}@", "a b@"]),
        st.sampled_from(["db.lan", "Bucket", "nas", "[::1]", "[fe80::", "10.0.0.5", "", "b"]),
        st.sampled_from(["", ":5432", ":99999", ":x", ":0"]),
        st.sampled_from(["", "/", "/mlflow", "/a b", f"/db?password={PASSWORD}", "?x=1", "#f", "/\n"]),
    ),
)
mlflow_settings = st.fixed_dictionaries(
    {},
    optional={
        "backend": st.sampled_from(["sqlite", "postgresql", "mysql"]),
        "backend_uri": st.one_of(st.none(), uris),
        "artifacts": st.sampled_from(["pvc", "minio", "s3", "S3"]),
        "artifacts_uri": st.one_of(st.none(), uris),
        "s3_endpoint_url": st.one_of(st.none(), uris),
        "s3_region": st.one_of(st.none(), st.text(max_size=12), st.just("garage")),
        "enabled": st.booleans(),
    },
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=40,
)


def _accepts_or_input_error(parse, text):
    try:
        parse(text)
    except InputError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)


def _inventory(text):
    return parse_inventory_text(text, "hosts.yml", __import__("pathlib").Path("/tmp/x/hosts.yml"))


def _config(text):
    return parse_config(parse_yaml(text, "piml.yaml"))


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_inventories(doc):
    _accepts_or_input_error(_inventory, yaml.safe_dump(doc))


@settings(max_examples=examples(300), deadline=None)
@given(documents)
def test_structured_configs(doc):
    _accepts_or_input_error(_config, yaml.safe_dump(doc))


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=200))
def test_raw_text(text):
    _accepts_or_input_error(_inventory, text)
    _accepts_or_input_error(_config, text)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=60))
def test_node_specs(text):
    _accepts_or_input_error(parse_node_spec, text)


def _one_line_each(exc: InputError) -> None:
    """Each problem is one line at a line of piml.yaml."""
    assert exc.problems
    for problem in exc.problems:
        assert str(problem) and "\n" not in str(problem) and str(problem).startswith("piml.yaml:")


@settings(max_examples=examples(400), deadline=None)
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


route_settings = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(
            st.sampled_from(["models:/iris@champion", "models:/iris/2", "models:/iris/latest", "models:/iris", "x"]),
            st.text(max_size=20),
            st.integers(),
        ),
        "min_replicas": st.one_of(st.integers(-2, 40), st.text(max_size=3)),
        "max_replicas": st.one_of(st.integers(-2, 40), st.none()),
        "batch_size": st.integers(-1, 300),
        "cpu": st.sampled_from(["500m", "1", "lots", "0.5", ""]),
        "memory": st.sampled_from(["1Gi", "512Mi", "1 GB", ""]),
        "modle": st.just("x"),
    },
)
serve_settings = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.one_of(st.booleans(), st.text(max_size=4)),
        "routes": st.one_of(
            st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), route_settings, max_size=3),
            st.lists(st.text(max_size=5), max_size=2),
            st.none(),
        ),
        "pip": st.one_of(st.none(), st.lists(st.text(max_size=8), max_size=2), st.integers()),
    },
)


@settings(max_examples=examples(400), deadline=None)
@given(serve_settings, st.booleans())
@example({"enabled": True, "routes": {"\n": {}}}, True)  # found by this test: the key went raw into the message
def test_serve_settings(serve, ray_enabled):
    """Any serve: block is valid or one line per problem at a line of piml.yaml, never another exception."""
    try:
        _config(yaml.safe_dump({"serve": serve, "ray": {"enabled": ray_enabled}}))
    except InputError as exc:
        _one_line_each(exc)


cron_field = st.one_of(
    st.sampled_from(["*", "?", "0", "59", "60", "*/5", "1-5", "5-1", "mon-fri", "jan", "1,2", "*/0", "", "7"]),
    st.text(alphabet="0123456789*/,-?abcdefjmnorstuvwy", max_size=8),
)
backup_settings = st.fixed_dictionaries(
    {},
    optional={
        "schedule": st.one_of(
            st.lists(cron_field, min_size=4, max_size=6).map(" ".join),
            st.sampled_from(["@daily", "@every 1h", "@never", "TZ=UTC 0 1 * * *", ""]),
            st.text(max_size=30),
            st.integers(),
            st.none(),
        ),
        "time_zone": st.one_of(
            st.sampled_from(["UTC", "Europe/Berlin", "Mars/Base", "", "Local"]), st.text(max_size=12)
        ),
        "keep": st.one_of(st.integers(-1, 2000), st.text(max_size=3)),
        "storage": st.sampled_from(["10Gi", "1 TB", ""]),
        "s3_uri": st.one_of(
            st.sampled_from(["s3://backups", "s3://backups/piml/lab", "s3://B", "s3://", "backups", "s3://a/b c"]),
            st.text(max_size=30).map(lambda t: "s3://backups/" + t),
        ),
        "s3_endpoint_url": st.one_of(
            st.sampled_from(["http://nas.lan:3900", "https://GK:pw@s3.lan", "ftp://nas", "http://[::1", ""]),
            st.text(max_size=20),
        ),
        "s3_region": st.one_of(st.sampled_from(["garage", "eu-west-1", "EU", ""]), st.text(max_size=8)),
    },
)


@settings(max_examples=examples(400), deadline=None)
@given(backup_settings, st.sampled_from(["sqlite", "postgresql"]))
def test_backup_settings(backup, backend):
    """Any backup: block is valid or one line per problem at a line of piml.yaml, never another exception."""
    try:
        _config(yaml.safe_dump({"backup": backup, "mlflow": {"backend": backend}}))
    except InputError as exc:
        _one_line_each(exc)


# Hostile YAML (issue 16): alias and merge-key bombs, chains of aliases, deep nesting and raw text made of YAML's
# own punctuation. Each example runs with the address space capped a few hundred MB above what the process already
# has and under a timer, so a loader without bounds fails here (MemoryError, the timer) instead of swapping.
MEMORY_HEADROOM = 512 * 1024 * 1024
EXAMPLE_SECONDS = 10
REFUSED_VALUES = 1_000_000  # a file whose aliases expand to this many values is refused, whatever the exact bound
REFUSED_DEPTH = 200  # and so is one nested this deep


class _TooSlow(Exception):
    pass


@contextmanager
def _bounded():
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * page
    old = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + MEMORY_HEADROOM if old[1] == resource.RLIM_INFINITY else min(size + MEMORY_HEADROOM, old[1])

    def _alarm(signum, frame):
        raise _TooSlow(f"took more than {EXAMPLE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, old)


def _in_inventory(body: str) -> str:
    """Hostile lines placed where an inventory's group variables go, after a valid server."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return (
        "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1: {ansible_host: 10.0.0.1}\n  vars:\n"
        + indented
    )


@st.composite
def alias_bombs(draw):
    """`levels` anchors, each holding `fan` aliases of the one before: at least fan**levels values expanded."""
    levels, fan = draw(st.integers(1, 14)), draw(st.integers(1, 12))
    shape = draw(st.sampled_from(["list", "map", "merge"]))
    first = "{x: lol}" if shape == "merge" else draw(st.sampled_from(["lol", "[lol, lol]", "{x: lol}"]))
    lines = [f"b0: &b0 {first}"]
    for i in range(1, levels + 1):
        refs = [f"*b{i - 1}"] * fan
        if shape == "list":
            lines.append(f"b{i}: &b{i} [{', '.join(refs)}]")
        elif shape == "map":
            lines.append(f"b{i}: &b{i} {{{', '.join(f'k{j}: {ref}' for j, ref in enumerate(refs))}}}")
        else:
            lines.append(f"b{i}: &b{i} {{<<: [{', '.join(refs)}]}}")
    return "\n".join(lines) + "\n", fan**levels


@st.composite
def deep_nestings(draw):
    depth = draw(st.integers(1, 5000))
    style = draw(st.sampled_from(["flow-list", "flow-map", "block-map", "block-list", "alias-chain"]))
    if style == "flow-list":
        return "a: " + "[" * depth + "]" * depth + "\n", depth
    if style == "flow-map":
        return "a: " + "{a: " * depth + "1" + "}" * depth + "\n", depth
    depth = min(depth, 900)  # block styles grow with the square of the depth: stay under the size bound
    if style == "block-map":
        return "".join("  " * i + f"k{i}:\n" for i in range(depth)), depth
    if style == "block-list":
        return "".join("  " * i + "-\n" for i in range(depth)), depth
    return "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, depth)), depth


def _hostile(parse, text):
    with _bounded():
        try:
            parse(text)
        except InputError as exc:
            assert exc.problems and all(str(p) and "\n" not in str(p) for p in exc.problems)
            return exc
    return None


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alias_bombs(), st.booleans())
def test_alias_bombs(bomb, in_inventory):
    text, at_least = bomb
    for parse, doc in ((_inventory, _in_inventory(text) if in_inventory else text), (_config, text)):
        error = _hostile(parse, doc)
        if at_least > REFUSED_VALUES:
            assert error is not None and any("aliases expand" in p.what for p in error.problems), error


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep_nestings())
def test_deep_nesting(nesting):
    text, depth = nesting
    for parse in (_inventory, _config):
        error = _hostile(parse, text)
        if depth > REFUSED_DEPTH:
            assert error is not None, f"nested {depth} deep and accepted"


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="&*<:[]{}-,?!|>'\"\n #ab01", max_size=300))
def test_raw_yaml_punctuation(text):
    _hostile(_inventory, text)
    _hostile(_config, text)
