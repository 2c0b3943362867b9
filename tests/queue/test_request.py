"""Requests: what is accepted, what is refused with one clear line, and that nothing else can happen (fuzzed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml.queue.base import check_url, redact
from piml.queue.request import Request, RequestError, make_request, parse_message, parse_param
from tests.fuzzing import examples


@pytest.mark.parametrize(
    "model",
    [
        "models:/iris/3",
        "models:/iris@champion",
        "models:/My Model/latest",
        "models:/a.b-c_d/12",
        "runs:/0a1b2c3d4e5f60718293a4b5c6d7e8f9/model",
        "runs:/abc/sub/dir/model",
    ],
)
def test_model_uris_accepted(model):
    assert make_request(model, "/data/x.csv").model == model


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "iris",
            "'iris' is not an MLflow model URI; write models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH",
        ),
        (
            "models:/iris",
            "'models:/iris' is not a registered model URI; write models:/NAME/VERSION (a number), models:/NAME/latest or models:/NAME@ALIAS",
        ),
        ("models:/iris/three", "'models:/iris/three' is not a registered model URI"),
        ("models:/iris@", "is not a registered model URI"),
        ("runs:/abc", "'runs:/abc' is not a run URI; write runs:/RUN_ID/ARTIFACT_PATH"),
        ("", "must be an MLflow model URI, not ''"),
        (7, "must be an MLflow model URI, not 7"),
    ],
)
def test_bad_models_refused(model, message):
    with pytest.raises(RequestError) as err:
        make_request(model, "/data/x.csv")
    assert str(err.value).startswith("model: ") and message in str(err.value)


@pytest.mark.parametrize(
    "given_input, stored",
    [
        ("/data/x.csv", "/data/x.csv"),
        ("file:///data/x.parquet", "file:///data/x.parquet"),
        ("https://data.lan/x.jsonl?token=abc", "https://data.lan/x.jsonl?token=abc"),
        ("datasets/iris.csv", "mlflow-artifacts:/datasets/iris.csv"),
        ("./datasets//iris.PQ", "mlflow-artifacts:/datasets/iris.PQ"),
        ("runs:/0a1b/data/x.ndjson", "runs:/0a1b/data/x.ndjson"),
        ("mlflow-artifacts:/d/x.csv", "mlflow-artifacts:/d/x.csv"),
        ("s3://bucket/x.parquet", "s3://bucket/x.parquet"),
    ],
)
def test_inputs_accepted_and_normalised(given_input, stored):
    request = make_request("models:/m/1", given_input)
    assert request.input == stored and request.format in ("csv", "parquet", "jsonl")


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            "/data/x.txt",
            "is not a .csv, .parquet or .jsonl file; name a dataset whose file name ends in .csv, .parquet or .jsonl",
        ),
        ("../secrets.csv", "leaves the artifact store"),
        ("ftp://host/x.csv", "unsupported scheme 'ftp'"),
        ("http:///x.csv", "has no host"),
        ("file://host/x.csv", "is not a local file URL"),
        ("https://data.lan/x.csv.gz", "is not a .csv, .parquet or .jsonl file"),
        ("/data/x\n.csv", "control characters"),
        (None, "must be a dataset URI or path"),
    ],
)
def test_bad_inputs_refused(bad, message):
    with pytest.raises(RequestError) as err:
        make_request("models:/m/1", bad)
    assert str(err.value).startswith("input: ") and message in str(err.value)


def test_params_and_output():
    request = make_request(
        "models:/m/1", "/x.csv", {"batch_size": "500", "threshold": 0.5, "mode": "fast"}, "out/p.parquet"
    )
    assert request.batch_size == 500 and request.model_params == {"threshold": 0.5, "mode": "fast"}
    assert request.output == "out/p.parquet"
    for params, message in [
        ({"batch_size": 0}, "params.batch_size: is 0"),
        ({"batch_size": True}, "params.batch_size: is True"),
        ({"x": [1]}, "params.x: is [1]; give text, a number or true/false"),
        ([1], "params: must be a mapping"),
        ({"1x": 1}, "params: '1x' is not a parameter name"),
        ({"x": float("nan")}, "params.x: is nan"),
    ]:
        with pytest.raises(RequestError, match=None) as err:
            make_request("models:/m/1", "/x.csv", params)
        assert str(err.value).startswith(message), str(err.value)
    for output in ("/abs.csv", "../x.csv", "x.txt", ""):
        with pytest.raises(RequestError) as err:
            make_request("models:/m/1", "/x.csv", output=output)
        assert str(err.value).startswith("output: ")


def test_message_round_trip_and_strictness():
    request = make_request("models:/m/1", "d/x.csv", {"batch_size": 10}, id="r-1")
    assert parse_message(request.to_json().encode()) == request
    assert json.loads(request.to_json()) == {
        "id": "r-1",
        "model": "models:/m/1",
        "input": "mlflow-artifacts:/d/x.csv",
        "output": "predictions.csv",
        "params": {"batch_size": 10},
    }
    cases = [
        (b"[]", "request: must be a JSON object, not list"),
        (b'{"id": "a", "model": "models:/m/1"}', "request: has no 'input'"),
        (
            b'{"id": "a", "model": "models:/m/1", "input": "/x.csv", "extra": 1}',
            "request: unknown field 'extra'; use only id, model, input, output, params",
        ),
        (b'{"id": "-a", "model": "models:/m/1", "input": "/x.csv"}', "id: '-a' is not a request id"),
        (b'{"id": "a", "model": "models:/m/1", "input": "/x.csv", "params": {"x": NaN}}', "request: is not valid JSON"),
        (b"{" * 100_000, "request: is 100000 bytes"),
        (b"\xff", "request: is not UTF-8 text"),
    ]
    for raw, message in cases:
        with pytest.raises(RequestError) as err:
            parse_message(raw)
        assert str(err.value).startswith(message), str(err.value)
        assert "\n" not in str(err.value)


def test_param_option_parsing():
    assert parse_param("batch_size=5000") == ("batch_size", 5000)
    assert parse_param("t=0.25") == ("t", 0.25) and parse_param("on=true") == ("on", True)
    assert parse_param("name=iris v2") == ("name", "iris v2") and parse_param("l=[1]") == ("l", "[1]")
    with pytest.raises(RequestError, match="--param: 'novalue' is not NAME=VALUE"):
        parse_param("novalue")


def test_broker_urls_are_checked_and_redacted():
    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("amqp://piml:s3cret@host/") == "amqp://piml:***@host/"
    assert redact("redis://host:6379") == "redis://host:6379"
    for bad in ("http://x", "redis://", "redis://host:notaport/0"):
        with pytest.raises(Exception) as err:
            check_url(bad)
        assert str(err.value).startswith("--queue-url: ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
prefixes = st.sampled_from(
    ["models:/", "runs:/", "http://", "https://h/", "file:///", "mlflow-artifacts:/", "s3://", "/", "../", ""]
)
uri_like = st.one_of(
    st.text(max_size=40),
    st.tuples(prefixes, st.text(max_size=30), st.sampled_from([".csv", ".parquet", ".jsonl", "/1", "@a", ""])).map(
        "".join
    ),
)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.dictionaries(
            st.sampled_from(["id", "model", "input", "output", "params", "x"]), json_values, max_size=6
        ).map(json.dumps),
        st.fixed_dictionaries(
            {"id": st.text(max_size=20), "model": uri_like, "input": uri_like},
            optional={"output": st.text(max_size=20), "params": json_values},
        ).map(json.dumps),
    )
)
def test_fuzz_messages_give_a_request_or_one_clear_line(raw):
    try:
        request = parse_message(raw)
    except RequestError as exc:
        text = str(exc)
        assert "\n" not in text and ": " in text and "; " in text, text
        return
    assert isinstance(request, Request)
    assert parse_message(request.to_json()) == request  # what is accepted survives the queue unchanged


@settings(max_examples=examples(200), deadline=None)
@given(uri_like, uri_like, json_values, st.one_of(st.none(), st.text(max_size=20)))
def test_fuzz_make_request(model, data, params, output):
    try:
        make_request(model, data, params, output)
    except RequestError as exc:
        assert "\n" not in str(exc) and "; " in str(exc)
