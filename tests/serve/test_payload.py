"""The request parser of the served models (piml/serve/payload.py), with MLflow's own parsing underneath: any body
under any content type is either rows for the model or one line for a 400, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml.serve.payload import PayloadError, parse
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
