"""Requests to a served model and their answers, the way MLflow's own scoring server reads and writes them.

A request body is JSON with one of `inputs`, `dataframe_split`, `dataframe_records` or `instances` (and optional
`params`), or CSV with a header. Parsing is MLflow's (mlflow.pyfunc.scoring_server), against the model's input
schema, so what `mlflow models serve` accepts is accepted here and means the same. One addition: plain rows
(`{"inputs": [[5.1, 3.5, 1.4, 0.2]]}`) for a model whose schema names its columns are given those columns in
order (MLflow's server refuses them, "Failed to enforce schema", for every scikit-learn model logged from a
DataFrame). Anything else is a PayloadError whose text is one line for a 400.
"""

from __future__ import annotations

import json
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
    try:
        data = scoring_server.infer_and_parse_data(document, input_schema)
    except Exception as exc:  # noqa: BLE001 - MlflowException, or pandas' own for a malformed frame
        raise PayloadError(f"the rows do not fit the model: {first_line(exc)}") from None
    return _named(data, input_schema), params


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
