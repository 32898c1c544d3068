"""pipeline.data.tables.write_csv, the one CSV/TSV writer: any text reads back unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from builders import REPO
from pipeline.data.tables import write_csv

HOSTILE = ["a bare\rreturn", "a\nnewline", "a\r\nbreak", 'say "hi"', "a, b", "a\tb", "ctl\x01\x07\x1f", "", "  "]


@pytest.mark.parametrize("sep", [",", "\t"])
def test_every_text_reads_back_unchanged_with_pandas_and_the_csv_module(tmp_path: Path, sep: str) -> None:
    frame = pd.DataFrame({"text": HOSTILE, "n": range(len(HOSTILE))})
    path = tmp_path / "table.csv"
    write_csv(frame, path, sep=sep)
    back = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    assert back["text"].tolist() == HOSTILE and back["n"].tolist() == [str(n) for n in range(len(HOSTILE))]
    with path.open(newline="", encoding="utf-8") as fh:
        assert [row["text"] for row in csv.DictReader(fh, delimiter=sep)] == HOSTILE


def test_appending_adds_rows_under_one_header(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.touch()  # an empty file, as an atomic output starts
    write_csv(pd.DataFrame({"text": ["a\rb"]}), path, append=True)
    write_csv(pd.DataFrame({"text": ["c"]}), path, append=True)
    assert pd.read_csv(path, dtype=str)["text"].tolist() == ["a\rb", "c"]


def test_nothing_else_in_the_pipeline_writes_a_csv() -> None:
    writers = [
        f"{file.relative_to(REPO)}:{number}"
        for folder in ("pipeline", "stages")
        for file in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(file.read_text().splitlines(), 1)
        if ".to_csv(" in line and file.name != "tables.py"
    ]
    assert writers == []
