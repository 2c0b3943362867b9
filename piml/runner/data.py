"""Datasets in, predictions out: fetch a CSV / Parquet / JSON-lines file, read it in batches, write the results.

Everything streams batch by batch, so a runner's memory is bounded by the batch size, not the dataset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from piml.errors import first_line
from piml.queue.base import redact

BATCH_BYTES = 32 << 20  # a batch's numbers take about this much memory: bounded, and few predict() calls
MIN_BATCH, MAX_BATCH_ROWS = 1_000, 1_000_000
HTTP_TIMEOUT = 60


class DataError(Exception):
    """The dataset cannot be fetched or read; the message says which and why."""


def fetch(uri: str, into: Path) -> Path:
    """A local path holding the dataset: the file itself for a path, else a download into `into`."""
    if uri.startswith("file://"):
        uri = unquote(urlsplit(uri).path)
    if uri.startswith("/"):
        path = Path(uri)
        if not path.is_file():
            raise DataError(f"no such file {uri}")
        if not os.access(path, os.R_OK):
            raise DataError(f"{uri} is not readable by the runner")
        return path
    if uri.startswith(("http://", "https://")):
        return _download(uri, into)
    from mlflow.artifacts import download_artifacts

    try:
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(into)))
    except Exception as exc:  # noqa: BLE001 - MlflowException, OSError, requests errors: one line each
        raise DataError(f"cannot download {uri}: {first_line(exc)}") from None
    if local.is_dir():
        raise DataError(f"{uri} is a directory of artifacts, not one file")
    return local


def _download(url: str, into: Path) -> Path:
    import urllib.error
    import urllib.request

    name = Path(urlsplit(url).path).name or "dataset"
    target = into / name
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response, open(target, "wb") as out:  # noqa: S310 - http(s) only
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise DataError(f"HTTP {exc.code} {exc.reason} from {redact(url)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {redact(url)}: {reason}") from None
    return target


def rows_per_batch(columns: int) -> int:
    """Rows per batch by memory, not a fixed count: a 20-column dataset goes in 200k-row batches, a
    2000-column one in 2k-row ones (each predict() call has a fixed cost, so fewer is faster)."""
    return max(MIN_BATCH, min(MAX_BATCH_ROWS, BATCH_BYTES // (8 * max(1, columns))))


def count_columns(path: Path, fmt: str) -> int:
    """The dataset's number of columns, read from its header / schema / first record only."""
    import json

    import pandas as pd

    if fmt == "parquet":
        import pyarrow.parquet as pq

        return len(pq.read_schema(path).names)
    if fmt == "csv":
        return len(pd.read_csv(path, nrows=0).columns)
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "{}")
    record = json.loads(first)
    return len(record) if isinstance(record, dict) else 1


def read_batches(path: Path, fmt: str, batch_size: int | None = None) -> Iterator:
    """pandas DataFrames of at most `batch_size` rows (default: by memory, see rows_per_batch)."""
    import pandas as pd

    try:
        if batch_size is None:
            batch_size = rows_per_batch(count_columns(path, fmt))
        if fmt == "csv":
            with pd.read_csv(path, chunksize=batch_size) as reader:
                yield from reader
        elif fmt == "jsonl":
            with pd.read_json(path, lines=True, chunksize=batch_size) as reader:
                yield from reader
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_size):
                    yield batch.to_pandas()
        else:  # validated away before; kept for safety
            raise DataError(f"unknown format {fmt}")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty") from None
    except Exception as exc:  # noqa: BLE001 - parser errors of three libraries
        raise DataError(f"cannot read {path.name} as {fmt}: {first_line(exc)}") from None


def as_frame(predictions, index_start: int):
    """Whatever predict() returned, as a DataFrame: a `prediction` column, or the model's own columns."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return predictions
    if isinstance(predictions, pd.Series):
        return predictions.to_frame(predictions.name if isinstance(predictions.name, str) else "prediction")
    values = np.asarray(predictions)
    if values.ndim <= 1:
        return pd.DataFrame({"prediction": values.reshape(-1)})
    return pd.DataFrame(
        values.reshape(len(values), -1),
        columns=[f"prediction_{i}" for i in range(values.reshape(len(values), -1).shape[1])],
    )


class PredictionWriter:
    """Appends batches of predictions to one file in the output's format."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._parquet = None

    def write(self, frame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.path, mode="a" if self.rows else "w", header=not self.rows, index=False)
        elif self.fmt == "jsonl":
            text = frame.to_json(orient="records", lines=True) if len(frame) else ""
            with open(self.path, "a" if self.rows else "w") as out:
                out.write(text if not text or text.endswith("\n") else text + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if not self.path.exists():
            self.path.write_text("")
