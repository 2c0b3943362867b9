"""Requests to a served model and their answers, the way MLflow's own scoring server reads and writes them.

A request body is JSON with one of `inputs`, `dataframe_split`, `dataframe_records` or `instances` (and optional
`params`), or CSV with a header. Parsing is MLflow's (mlflow.pyfunc.scoring_server), against the model's input
schema, so what `mlflow models serve` accepts is accepted here and means the same. One addition: plain rows
(`{"inputs": [[5.1, 3.5, 1.4, 0.2]]}`) for a model whose schema names its columns are given those columns in
order (MLflow's server refuses them, "Failed to enforce schema", for every scikit-learn model logged from a
DataFrame). Anything else is a PayloadError whose text is one line for a 400.

Requests that come together are answered together (predict_together): their rows are parsed as one frame and
asked of the model once. MLflow's parse of a request costs about what the model call for eight of them does
(py-spy on a replica under benchmarks/serve_throughput.py), so parsing each alone would undo half the batching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from typing import Any

from piml.errors import first_line

JSON = "application/json"
CSV = "text/csv"
MAX_BODY = 32 * 1024 * 1024  # a Pi's replica holds the whole request in memory
FORMATS = ("inputs", "dataframe_split", "dataframe_records", "instances")


class PayloadError(Exception):
    """A request the model cannot be asked with; str() is the one-line reason for the 400."""


def parse(body: bytes, content_type: str | None, input_schema: Any = None) -> tuple[Any, dict | None]:
    """The model input and its params from a request body; PayloadError if it is not one MLflow would score."""
    from mlflow.pyfunc import scoring_server

    if len(body) > MAX_BODY:
        raise PayloadError(f"the body is {len(body)} bytes, more than {MAX_BODY}: send the rows in smaller requests")
    mime = (content_type or JSON).split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8 text") from None
    if mime == CSV:
        try:
            return scoring_server.parse_csv_input(StringIO(text), schema=input_schema), None
        except Exception as exc:  # noqa: BLE001 - pandas and MLflow raise many kinds for a bad CSV
            raise PayloadError(f"not a CSV the model can read: {first_line(exc)}") from None
    if mime != JSON:
        raise PayloadError(f"content type {mime!r} is not served: send {JSON} or {CSV}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict) or sum(key in document for key in FORMATS) != 1:
        raise PayloadError(
            f"the JSON must be an object with exactly one of {', '.join(FORMATS)} "
            '(for example {"inputs": [[5.1, 3.5, 1.4, 0.2]]})'
        )
    params = document.pop("params", None)
    if params is not None and not isinstance(params, dict):
        raise PayloadError("`params` must be an object of name: value")
    return parse_document(document, input_schema), params


def parse_document(document: dict, input_schema: Any = None) -> Any:
    """The model input of a JSON document with one format key (and no params), parsed by MLflow."""
    from mlflow.pyfunc import scoring_server

    try:
        data = scoring_server.infer_and_parse_data(document, input_schema)
    except Exception as exc:  # noqa: BLE001 - MlflowException, or pandas' own for a malformed frame
        raise PayloadError(f"the rows do not fit the model: {first_line(exc)}") from None
    return _named(data, input_schema)


@dataclass(frozen=True)
class Rows:
    """A request's rows as sent (JSON, not yet parsed): flat rows, the same columns (dataframe_split) or keys
    (dataframe_records) in each. Rows of the same shape are parsed as one document: the same format and
    columns, and in each column the same kinds of JSON value. pandas infers a column's type from the kinds of
    value in it (an integer beside a float is read as a float, a null beside a string as NaN), so rows read
    alongside rows of another shape could reach the model other than they would alone."""

    format: str
    columns: tuple[str, ...]  # dataframe_split's columns or the records' keys; () for inputs and instances
    rows: list
    kinds: tuple[frozenset[str], ...]  # per column: the kinds of JSON value in it

    def document(self) -> dict:
        if self.format == "dataframe_split":
            return {self.format: {"columns": list(self.columns), "data": self.rows}}
        return {self.format: self.rows}

    def shape(self) -> tuple:
        return self.format, self.columns, self.kinds


def read(body: bytes, content_type: str | None, input_schema: Any = None) -> tuple[Any, dict | None]:
    """As parse(), but a request of plain rows without params (the common one) is left as Rows, to be parsed
    with the rows of the requests that come with it (predict_together)."""
    rows = _rows_of(body, content_type)
    return (rows, None) if rows is not None else parse(body, content_type, input_schema)


def _rows_of(body: bytes, content_type: str | None) -> Rows | None:
    """The request's Rows when it is plain rows without params, else None (parse() reads it, or says what is wrong)."""
    mime = (content_type or JSON).split(";")[0].strip().lower()
    if mime != JSON or len(body) > MAX_BODY:
        return None
    try:
        document = json.loads(body.decode("utf-8"))  # as parse() reads it: UTF-8 only
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return None
    if not isinstance(document, dict) or len(document) != 1:
        return None
    ((format_, value),) = document.items()
    columns: tuple[str, ...] = ()
    if format_ == "dataframe_split":
        if not isinstance(value, dict) or set(value) != {"columns", "data"} or not isinstance(value["columns"], list):
            return None
        columns, rows = tuple(value["columns"]), value["data"]
        if not all(isinstance(c, str) for c in columns):
            return None
        kinds = _kinds(rows, len(columns))
    elif format_ == "dataframe_records":
        if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
            return None
        columns, rows = tuple(value[0]), value
        if any(tuple(r) != columns for r in rows):
            return None
        kinds = _kinds([list(r.values()) for r in rows], len(columns))
    elif format_ in ("inputs", "instances"):
        rows = value
        kinds = _kinds(rows, None, tensor=True)
    else:
        return None
    return Rows(format_, columns, rows, kinds) if kinds else None


def _kinds(table: Any, width: int | None, tensor: bool = False) -> tuple[frozenset[str], ...] | None:
    """Per column, the kinds of JSON value in it; None unless `table` is a non-empty list of lists of scalars, all
    of one width (`width` when given), that reads the same beside rows of the same kinds: no integer beyond int64
    (pandas and numpy read it as uint64 or as objects depending on its neighbours' signs), and for a `tensor`
    (inputs, instances: numpy reads the whole table as one array) no string (numpy sizes a string array by its
    longest string)."""
    if not isinstance(table, list) or not table or not isinstance(table[0], list):
        return None
    width = len(table[0]) if width is None else width
    if not width or any(not isinstance(row, list) or len(row) != width for row in table):
        return None
    refused = {"other", "big int"} | ({"str"} if tensor else set())
    kinds = []
    for column in zip(*table, strict=True):
        seen = frozenset(map(_kind, column))
        if seen & refused:
            return None
        kinds.append(seen)
    return tuple(kinds)


def _kind(value: Any) -> str:
    if value is None or isinstance(value, (bool, float, str)):
        return type(value).__name__
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "big int"
    return "other"  # a list or an object: nested, not a row of scalars


def predict_together(model: Any, parts: list[Any]) -> list[dict[str, Any] | PayloadError]:
    """The answers to requests that came together for one model, each part a Rows or a parsed DataFrame: one
    parse and one model call for all of them when they fit together, else each alone, so that a bad request
    gets its own PayloadError and the others their answers."""
    schema = model.metadata.get_input_schema()
    if len(parts) > 1:
        try:
            whole, counts = _together(parts, schema)
            if whole is not None:
                answer = predict(model, whole, None)
                if all(isinstance(v, list) and len(v) == sum(counts) for v in answer.values()):
                    return _split(answer, counts)
        except PayloadError:
            pass
    answers: list[dict[str, Any] | PayloadError] = []
    for part in parts:
        try:
            data = parse_document(part.document(), schema) if isinstance(part, Rows) else part
            answers.append(predict(model, data, None))
        except PayloadError as exc:
            answers.append(exc)
    return answers


def _together(parts: list[Any], schema: Any) -> tuple[Any, list[int]]:
    """All the parts' rows as one model input, and how many rows each gave; (None, []) when they would not reach
    the model as they would alone: Rows of one shape are parsed as one document; DataFrames (and Rows of other
    shapes, parsed each) are put end to end only when their columns and dtypes are the same."""
    import pandas as pd

    first = parts[0]
    if all(isinstance(p, Rows) and p.shape() == first.shape() for p in parts):
        whole = Rows(first.format, first.columns, [row for p in parts for row in p.rows], first.kinds)
        return parse_document(whole.document(), schema), [len(p.rows) for p in parts]
    frames = [parse_document(p.document(), schema) if isinstance(p, Rows) else p for p in parts]
    if not all(isinstance(f, pd.DataFrame) and f.dtypes.equals(frames[0].dtypes) for f in frames):
        return None, []
    return pd.concat(frames, ignore_index=True), [len(f) for f in frames]


def _split(whole: dict[str, Any], sizes: list[int]) -> list[dict[str, Any] | PayloadError]:
    parts: list[dict[str, Any] | PayloadError] = []
    start = 0
    for size in sizes:
        parts.append({key: value[start : start + size] for key, value in whole.items()})
        start += size
    return parts


def _named(data: Any, input_schema: Any) -> Any:
    """Plain rows as wide as a column schema: a frame with the schema's columns, in order."""
    import numpy as np

    if input_schema is None or input_schema.is_tensor_spec() or not input_schema.has_input_names():
        return data
    names = input_schema.input_names()
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == len(names):
        import pandas as pd

        return pd.DataFrame(data, columns=names)
    return data


def predict(model: Any, data: Any, params: dict | None) -> dict[str, Any]:
    """{"predictions": [...]} as MLflow's scoring server writes it, plus "probabilities" where the underlying
    model has predict_proba. A model that refuses the rows is a PayloadError (a 400, never a 500)."""
    from mlflow.pyfunc import scoring_server

    try:
        raw = model.predict(data, params=params) if params else model.predict(data)
    except Exception as exc:  # noqa: BLE001 - schema enforcement (MlflowException) or the model's own error
        raise PayloadError(f"the model refused the rows: {first_line(exc)}") from None
    out = StringIO()
    scoring_server.predictions_to_json(raw, out)
    answer = json.loads(out.getvalue())
    probabilities = _probabilities(model, data)
    if probabilities is not None:
        answer["probabilities"] = probabilities
    return answer


def _probabilities(model: Any, data: Any) -> list | None:
    try:
        estimator = model.get_raw_model()
    except Exception:  # noqa: BLE001 - flavours without a raw model
        return None
    if not callable(getattr(estimator, "predict_proba", None)):
        return None
    try:
        return estimator.predict_proba(data).tolist()
    except Exception:  # noqa: BLE001 - the rows passed the pyfunc schema but not the raw model: no probabilities
        return None
