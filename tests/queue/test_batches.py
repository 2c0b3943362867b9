"""Batches by memory: few predict() calls for narrow data, bounded memory for wide data, every format."""

import json

import pandas as pd
import pytest

from piml.runner.data import BATCH_BYTES, DataError, count_columns, read_batches, rows_per_batch


def test_rows_per_batch_follows_the_width():
    assert rows_per_batch(20) == BATCH_BYTES // 160
    assert rows_per_batch(2000) == BATCH_BYTES // 16000
    assert rows_per_batch(10**7) == 1_000 and rows_per_batch(1) == 1_000_000 and rows_per_batch(0) == 1_000_000


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_default_batches_by_memory_and_an_explicit_size_wins(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr("piml.runner.data.BATCH_BYTES", 8 * 10 * 1500)  # small numbers, the same rule
    narrow = pd.DataFrame({f"f{i}": range(5000) for i in range(4)})  # 3750 rows per batch
    wide = pd.DataFrame({f"f{i}": range(3000) for i in range(10)})  # 1500 rows per batch
    for name, frame, expected in (("narrow", narrow, [3750, 1250]), ("wide", wide, [1500, 1500])):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path)
        else:
            frame.to_json(path, orient="records", lines=True)
        assert count_columns(path, fmt) == frame.shape[1]
        assert [len(b) for b in read_batches(path, fmt)] == expected
    assert [len(b) for b in read_batches(tmp_path / f"narrow.{fmt}", fmt, 2000)] == [2000, 2000, 1000]


def test_a_bad_header_is_a_data_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" + json.dumps({"a": 1}) + "\n")
    with pytest.raises(DataError, match="cannot read bad.jsonl as jsonl"):
        list(read_batches(path, "jsonl"))
