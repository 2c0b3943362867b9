"""The request parser of the served models (piml/serve/payload.py), with MLflow's own parsing underneath: any body
under any content type is either rows for the model or one line for a 400, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from piml.serve.payload import JSON, PayloadError, parse
from tests.fuzzing import examples

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["inputs", "dataframe_split", "dataframe_records", "instances", "params", "columns", "x"])
DOCUMENTS = st.dictionaries(KEYS, JSON_VALUES, max_size=3).map(lambda d: json.dumps(d).encode())
TYPES = st.sampled_from(["application/json", "text/csv", "application/json; charset=utf-8", "text/plain", None])


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=200) | DOCUMENTS, content_type=TYPES)
def test_any_body_is_rows_or_one_line(body, content_type):
    try:
        parse(body, content_type)
    except PayloadError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_the_formats_mlflow_scores_are_read_as_it_reads_them():
    import pandas as pd

    split = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}}
    records = {"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}
    for document in (split, records):
        data, params = parse(json.dumps(document).encode(), "application/json")
        pd.testing.assert_frame_equal(data, pd.DataFrame({"a": [1, 3], "b": [2, 4]}))
        assert params is None
    data, params = parse(b'{"inputs": [[1, 2]], "params": {"k": 1}}', "application/json")
    assert data.tolist() == [[1, 2]] and params == {"k": 1}
    data, _ = parse(b"a,b\n1,2\n", "text/csv")
    assert list(data.columns) == ["a", "b"]


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": [[1]], "params": [1]}', b'{"inputs": [[1]], "instances": [[1]]}', b"[1, 2]"],
    ids=["params-not-object", "two-formats", "not-an-object"],
)
def test_ambiguous_or_malformed_documents_are_refused(body):
    with pytest.raises(PayloadError):
        parse(body, "application/json")


def test_plain_rows_get_the_columns_a_schema_names():
    """{"inputs": [[...]]} for a model logged from a DataFrame: MLflow's own server refuses it (its schema names
    columns), piml gives the rows those columns in order; rows of another width stay as they are (and the model
    refuses them with its own reason)."""
    import numpy as np
    from mlflow.types import ColSpec, Schema, TensorSpec

    columns = Schema([ColSpec("double", "sepal length"), ColSpec("double", "petal width")])
    data, _ = parse(b'{"inputs": [[5.1, 0.2], [6.0, 1.5]]}', "application/json", columns)
    assert list(data.columns) == ["sepal length", "petal width"] and data.values.tolist() == [[5.1, 0.2], [6.0, 1.5]]
    data, _ = parse(b'{"inputs": [[5.1, 0.2, 9.9]]}', "application/json", columns)
    assert isinstance(data, np.ndarray)
    tensor = Schema([TensorSpec(np.dtype("float64"), (-1, 2))])
    data, _ = parse(b'{"inputs": [[5.1, 0.2]]}', "application/json", tensor)
    assert isinstance(data, np.ndarray)


# -- requests answered together (predict_together): the same answer each would get alone -----------------------


class RowsEcho:
    """A pyfunc model that answers each row with what it was given: every value and its column's dtype. Any
    difference in how a value was parsed, because other requests' rows were beside it, changes the answer."""

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            return [
                "|".join(f"{c}={model_input[c].iloc[i]!r}:{model_input[c].dtype}" for c in model_input)
                for i in range(len(model_input))
            ]
        rows = np.asarray(model_input)
        return [f"{row.tolist()!r}:{rows.dtype}" for row in rows]


@pytest.fixture(scope="module", params=["schema", "no-schema"])
def echo_model(request, tmp_path_factory):
    """RowsEcho saved and loaded by MLflow: with a signature of a column of each type a JSON value can be cast
    to, or with none (MLflow then parses without casting)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import PythonModel
    from mlflow.types import ColSpec, Schema

    echo = type("RowsEcho", (PythonModel,), {"predict": RowsEcho.predict})
    schema = Schema([ColSpec("double", "x"), ColSpec("long", "n"), ColSpec("string", "s"), ColSpec("boolean", "b")])
    signature = ModelSignature(schema) if request.param == "schema" else None
    path = tmp_path_factory.mktemp("echo") / "model"
    mlflow.pyfunc.save_model(path, python_model=echo(), signature=signature)
    return mlflow.pyfunc.load_model(str(path))


VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64])
    | st.floats()
    | st.text(max_size=3)
)
ROW = st.fixed_dictionaries({"x": VALUES, "n": VALUES, "s": VALUES, "b": VALUES})
RIGHT_ROW = st.fixed_dictionaries(
    {
        "x": st.floats(-1e6, 1e6) | st.integers(-5, 5),
        "n": st.integers(-5, 5),
        "s": st.text(max_size=3),
        "b": st.booleans(),
    }
)


@st.composite
def request_bodies(draw):
    """(body, content type): rows, mostly right for the echo model's schema, in one of the formats."""
    rows = draw(st.lists(RIGHT_ROW | ROW, min_size=1, max_size=3))
    shape = draw(st.sampled_from(["dataframe_split", "dataframe_records", "inputs", "instances", "csv"]))
    data = [[row[c] for c in "xnsb"] for row in rows]
    if shape == "csv":
        import pandas as pd

        return pd.DataFrame(data, columns=list("xnsb")).to_csv(index=False).encode(), "text/csv"
    if shape == "dataframe_records":
        document = {shape: rows}
    elif shape == "dataframe_split":
        document = {shape: {"columns": list("xnsb"), "data": data}}
    else:
        document = {shape: data}
    return json.dumps(document).encode(), "application/json"


def alone(model, body, content_type):
    """What a request gets on its own: the answer, or its error's text."""
    from piml.serve.payload import predict

    try:
        data, params = parse(body, content_type, model.metadata.get_input_schema())
        return predict(model, data, params)
    except PayloadError as exc:
        return f"error: {exc}"


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request_bodies(), min_size=2, max_size=5))
# found by Hypothesis: numpy reads [false, 2**63] as uint64 alone, as objects beside -2**63 - 1
@example(
    requests=[
        (b'{"instances": [[false, false, 9223372036854775808, 9223372036854775808]]}', JSON),
        (b'{"instances": [[false, false, 9223372036854775808, -9223372036854775809]]}', JSON),
    ]
)
# numpy sizes a string array by its longest string: <U1 alone, <U4 beside "abcd"
@example(requests=[(b'{"inputs": [["a", "b", "c", "d"]]}', JSON), (b'{"inputs": [["abcd", "b", "c", "d"]]}', JSON)])
def test_requests_answered_together_get_what_each_gets_alone(echo_model, requests):
    """What piml's route does with requests that come together (piml/serve/app.py's predict_batch), against
    MLflow's parse and a model call for each request alone."""
    from piml.serve.payload import predict_together, read

    schema, parts, expected = echo_model.metadata.get_input_schema(), [], []
    for body, content_type in requests:
        try:
            parts.append(read(body, content_type, schema)[0])
        except PayloadError:  # a 400 before any batch
            continue
        expected.append(alone(echo_model, body, content_type))
    together = [a if isinstance(a, dict) else f"error: {a}" for a in predict_together(echo_model, parts)]
    assert together == expected
