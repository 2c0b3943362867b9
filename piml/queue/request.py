"""A request: run a registered model on a dataset. Validated before it is queued, and again when taken.

The message on the queue is JSON: {"id", "model", "input", "output"?, "params"?}

- model: an MLflow model URI: `models:/Name/Version`, `models:/Name@alias`, `models:/Name/latest`, `runs:/RUN_ID/PATH`
- input: a CSV, Parquet or JSON-lines dataset (the format is the file's extension): an MLflow artifact URI
  (`runs:/...`, `mlflow-artifacts:/...`, `s3://...`), an http(s) URL, an absolute path (`/data/x.csv`,
  `file:///data/x.csv`), or a relative path, which means a path on the shared artifact store
  (`datasets/x.csv` is `mlflow-artifacts:/datasets/x.csv`)
- output: the predictions' file name in the MLflow run (default `predictions.csv`; `.parquet` and `.jsonl` too)
- params: a flat mapping of names to text, numbers or booleans; `batch_size` is the runner's, the rest go to
  the model's `predict(..., params=...)` and are logged on the run

Pure standard library (the runner ships to the cluster as source): no pydantic, no mlflow.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from piml.errors import InputError, Problem

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FIELDS = ("id", "model", "input", "output", "params")
MAX_MESSAGE = 64 * 1024  # bytes: a request names its data, it does not carry it
MAX_PARAMS = 50
RUNNER_PARAMS = {"batch_size"}
MAX_BATCH = 10_000_000
DEFAULT_OUTPUT = "predictions.csv"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MODEL_NAME = r"[^/@\x00-\x1f\x7f]{1,256}"
_MODEL_URI = re.compile(
    rf"^models:/(?P<name>{_MODEL_NAME})(/(?P<version>\d{{1,9}}|latest|[A-Z][a-zA-Z]{{1,30}})|@(?P<alias>[A-Za-z0-9_-]{{1,255}}))$"
)
_RUN_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32}|[A-Za-z0-9_-]{1,64})/(?P<path>[^\x00-\x1f\x7f]{1,1024})$")
_ARTIFACT_SCHEMES = ("runs", "mlflow-artifacts", "s3", "gs", "wasbs")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RequestError(InputError):
    """A request that can never run: malformed, or naming something it cannot be."""


def _problem(where: str, what: str, fix: str) -> RequestError:
    return RequestError(Problem(where, what, fix))


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Request:
    id: str
    model: str
    input: str
    output: str = DEFAULT_OUTPUT
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return input_format(self.input)

    @property
    def batch_size(self) -> int | None:
        return self.params.get("batch_size")

    @property
    def model_params(self) -> dict[str, Any]:
        """The params meant for the model's predict(), not for the runner."""
        return {k: v for k, v in self.params.items() if k not in RUNNER_PARAMS}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "model": self.model, "input": self.input, "output": self.output}
        if self.params:
            data["params"] = dict(self.params)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def new_id() -> str:
    """Sortable by submission time, unique without coordination: 20261124-153000-3f2a9c1e."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def check_model(uri: Any, where: str = "model") -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise _problem(
            where,
            f"must be an MLflow model URI, not {_show(uri)}",
            "write models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH",
        )
    uri = uri.strip()
    if uri.startswith("models:/"):
        if not _MODEL_URI.match(uri):
            raise _problem(
                where,
                f"{_show(uri)} is not a registered model URI",
                "write models:/NAME/VERSION (a number), models:/NAME/latest or models:/NAME@ALIAS",
            )
        return uri
    if uri.startswith("runs:/"):
        if not _RUN_URI.match(uri):
            raise _problem(
                where, f"{_show(uri)} is not a run URI", "write runs:/RUN_ID/ARTIFACT_PATH, e.g. runs:/0a1b.../model"
            )
        return uri
    raise _problem(
        where,
        f"{_show(uri)} is not an MLflow model URI",
        "write models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH",
    )


def input_format(uri: str) -> str:
    """csv, parquet or jsonl, from the extension of the URI's path (a URL's query is ignored)."""
    path = urlsplit(uri).path if "://" in uri else uri
    lowered = path.lower()
    for ext, fmt in FORMATS.items():
        if lowered.endswith(ext):
            return fmt
    raise _problem(
        "input",
        f"{_show(uri)} is not a .csv, .parquet or .jsonl file",
        "name a dataset whose file name ends in .csv, .parquet or .jsonl",
    )


def check_input(uri: Any, where: str = "input") -> str:
    """The dataset URI, normalised: a relative path becomes mlflow-artifacts:/PATH."""
    if not isinstance(uri, str) or not uri.strip():
        raise _problem(
            where,
            f"must be a dataset URI or path, not {_show(uri)}",
            "name a .csv, .parquet or .jsonl file: an MLflow artifact URI, an http(s) URL or a path",
        )
    uri = uri.strip()
    if len(uri) > 4096 or _CONTROL.search(uri):
        raise _problem(
            where, f"{_show(uri)} is too long or has control characters", "name the dataset with a plain URI or path"
        )
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else ""
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        if not parts.hostname:
            raise _problem(where, f"{_show(uri)} has no host", "write http(s)://HOST/PATH")
    elif scheme == "file":
        if not uri.startswith("file:///"):
            raise _problem(where, f"{_show(uri)} is not a local file URL", "write file:///ABSOLUTE/PATH")
    elif scheme in _ARTIFACT_SCHEMES:
        if uri.rstrip("/") in (f"{scheme}:", f"{scheme}:/"):
            raise _problem(where, f"{_show(uri)} names no file", f"write {scheme}:/.../DATA.csv")
    elif scheme:
        raise _problem(
            where,
            f"{_show(uri)}: unsupported scheme '{scheme}'",
            "use runs:/, mlflow-artifacts:/, s3://, http(s)://, file:/// or a path",
        )
    elif not uri.startswith("/"):
        parts = [p for p in uri.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise _problem(
                where,
                f"{_show(uri)} leaves the artifact store",
                "name a path inside the shared artifact store, without '..'",
            )
        uri = "mlflow-artifacts:/" + "/".join(parts)
    input_format(uri)
    return uri


def check_output(name: Any, where: str = "output") -> str:
    if name is None:
        return DEFAULT_OUTPUT
    if not isinstance(name, str) or not name.strip() or len(name) > 255 or _CONTROL.search(name):
        raise _problem(
            where,
            f"must be a file name, not {_show(name)}",
            "write e.g. predictions.csv, predictions.parquet or predictions.jsonl",
        )
    parts = name.strip().split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _problem(
            where,
            f"{_show(name)} is not a relative artifact path",
            "write e.g. predictions.csv or out/predictions.parquet",
        )
    if not any(name.lower().endswith(ext) for ext in FORMATS):
        raise _problem(
            where, f"{_show(name)} is not a .csv, .parquet or .jsonl file", "end the name with .csv, .parquet or .jsonl"
        )
    return name.strip()


def check_params(params: Any, where: str = "params") -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _problem(
            where, f"must be a mapping of names to values, not {_show(params)}", 'write e.g. {"batch_size": 5000}'
        )
    if len(params) > MAX_PARAMS:
        raise _problem(where, f"has {len(params)} entries", f"pass at most {MAX_PARAMS}")
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            raise _problem(
                where,
                f"{_show(name)} is not a parameter name",
                "use letters, digits, '_', '.', '-' (starting with a letter or '_')",
            )
        here = f"{where}.{name}"
        if isinstance(value, float) and not math.isfinite(value):
            raise _problem(here, f"is {value}", "give a finite number")
        if isinstance(value, str) and (len(value) > 1000 or "\x00" in value):
            raise _problem(here, "is too long or has a NUL character", "give at most 1000 characters of text")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise _problem(here, f"is {_show(value)}", "give text, a number or true/false")
        checked[name] = value
    if "batch_size" in checked:
        size = checked["batch_size"]
        if isinstance(size, str) and size.strip().isdigit():
            size = int(size.strip())
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH:
            raise _problem(
                f"{where}.batch_size", f"is {_show(size)}", f"give a whole number of rows from 1 to {MAX_BATCH}"
            )
        checked["batch_size"] = size
    return checked


def check_id(value: Any, where: str = "id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _problem(
            where,
            f"{_show(value)} is not a request id",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def make_request(model: Any, input: Any, params: Any = None, output: Any = None, id: Any = None) -> Request:
    """A new request from its parts, validated; a fresh id unless one is given."""
    return Request(
        id=check_id(id) if id is not None else new_id(),
        model=check_model(model),
        input=check_input(input),
        output=check_output(output),
        params=check_params(params),
    )


def from_dict(data: Any) -> Request:
    if not isinstance(data, dict):
        raise _problem(
            "request",
            f"must be a JSON object, not {type(data).__name__}",
            'send {"id": ..., "model": ..., "input": ...}',
        )
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise _problem("request", f"unknown field {_show(unknown[0])}", f"use only {', '.join(FIELDS)}")
    for name in ("id", "model", "input"):
        if name not in data:
            raise _problem("request", f"has no '{name}'", f'add "{name}"')
    return Request(
        id=check_id(data["id"]),
        model=check_model(data["model"]),
        input=check_input(data["input"]),
        output=check_output(data.get("output")),
        params=check_params(data.get("params")),
    )


def parse_message(raw: bytes | str) -> Request:
    """A request from its queue message; RequestError with one clear line for anything else."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_MESSAGE:
            raise _problem(
                "request",
                f"is {len(raw)} bytes",
                f"keep a request under {MAX_MESSAGE} bytes: name the data, do not carry it",
            )
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _problem("request", "is not UTF-8 text", "send a JSON object encoded as UTF-8") from None
    if not isinstance(raw, str):
        raise _problem("request", f"is a {type(raw).__name__}", "send a JSON object")
    if len(raw) > MAX_MESSAGE:
        raise _problem(
            "request",
            f"is {len(raw)} characters",
            f"keep a request under {MAX_MESSAGE} bytes: name the data, do not carry it",
        )
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _problem(
            "request", f"is not valid JSON ({_short(exc)})", 'send {"id": ..., "model": ..., "input": ...}'
        ) from None
    return from_dict(data)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__


def id_of(raw: bytes | str) -> str | None:
    """The id of a message, if it has a usable one, even when the rest is malformed."""
    try:
        data = json.loads(raw)
        return check_id(data.get("id")) if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - any garbage: no id
        return None


def parse_param(text: str) -> tuple[str, Any]:
    """--param k=v: v as JSON scalar when it is one (5, 0.1, true, null), else text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise _problem("--param", f"{_show(text)} is not NAME=VALUE", "write e.g. --param batch_size=5000")
    try:
        parsed = json.loads(value, parse_constant=_no_constant)
        if not isinstance(parsed, (int, float, bool)) and parsed is not None:
            parsed = value
    except ValueError:
        parsed = value
    return name.strip(), parsed
