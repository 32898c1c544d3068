"""ingest: raw file -> normalised table + data card; bad data stops with one line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from builders import write_sentiment_tsv
from helpers import expect_user_error, raw_data, set_params
from pipeline import paths
from stages import ingest


def raw_file(project: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((project / "params.yaml").read_text())["ingest"]["source"])


def test_ratings_become_labels_by_sign_and_zero_is_dropped(project: Path, tmp_path: Path) -> None:
    source = write_sentiment_tsv(
        tmp_path / "zeros.tsv", n=40, extra=[(900, 0, "a neutral line"), (901, 0.0, "another one")]
    )
    set_params(project, {"ingest.source": raw_data(project, source)})
    ingest.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert list(table.columns) == ["text", "label", "source_row"]
    assert list(table["label"].cat.categories) == ["negative", "positive"]
    raw = pd.read_csv(source, sep="\t", header=None, names=["id", "rating", "text"])
    expected = raw[raw.rating != 0].assign(label=lambda f: f.rating.gt(0).map({True: "positive", False: "negative"}))
    assert table["label"].astype(str).tolist() == expected["label"].tolist()
    assert card["rows_read"] == 42 and card["rows"] == 40
    assert card["dropped"]["label_in_drop_values"] == 2
    assert card["labels"] == {"negative": 20, "positive": 20}
    assert card["text_words"]["max"] >= card["text_words"]["median"] > 0


def test_duplicates_are_dropped_and_conflicts_removed(project: Path, tmp_path: Path) -> None:
    extra = [
        (801, 1.0, "Same  TEXT here"),
        (802, 2.0, "same text here"),
        (803, 1.0, "torn text"),
        (804, -1.0, "torn text"),
    ]
    source = write_sentiment_tsv(tmp_path / "dups.tsv", n=20, extra=extra)
    set_params(project, {"ingest.source": raw_data(project, source)})
    ingest.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["dropped"]["duplicate"] == 1 and card["dropped"]["conflicting_duplicate"] == 2
    assert "torn text" not in set(table["text"])
    assert table["text"].tolist().count("Same  TEXT here") == 1


def test_declared_labels_fix_the_label_order(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "labels.csv"
    source.write_text("review,sentiment\ngood film,pos\nbad film,neg\nfine film,pos\n")
    set_params(
        project,
        {
            "ingest.source": raw_data(project, source),
            "ingest.format": "csv",
            "ingest.header": True,
            "ingest.column_names": None,
            "ingest.text_column": "review",
            "ingest.label_column": "sentiment",
            "ingest.score_to_label": None,
            "ingest.labels": ["pos", "neg"],
        },
    )
    ingest.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    assert list(table["label"].cat.categories) == ["pos", "neg"]
    assert table["source_row"].tolist() == [2, 3, 4]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1\t1.0\tfine\n2\t-1.0\t   \n", r"reviews.tsv: line 2: empty text in column 'text'$"),
        ("1\t1.0\tgood\n2\tabc\tbad\n", r"reviews.tsv: line 2: label 'abc' is not a number"),
        ("1\t1.0\tgood\n2\t\tbad\n", r"reviews.tsv: line 2: missing label in column 'rating'"),
        ("1\t1.0\tgood\n2\t2.0\tnice\n", r"reviews.tsv: only one class \(positive\) after ingest"),
    ],
    ids=["empty-text", "non-numeric-rating", "missing-label", "one-class"],
)
def test_bad_rows_are_named(project: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    raw_file(project).write_text(content)
    err = expect_user_error(ingest.main, capsys)
    assert re.search(message, err), err
    assert not paths.INGESTED.exists()


JSONL_LABELS = {
    "ingest.format": "jsonl",
    "ingest.column_names": None,
    "ingest.text_column": "text",
    "ingest.label_column": "label",
    "ingest.score_to_label": None,
}


def test_a_label_written_as_a_number_in_several_ways_is_one_class_and_the_card_counts_the_rewrites(
    project: Path, tmp_path: Path
) -> None:
    records = [{"text": f"text number {i}", "label": label} for i, label in enumerate([1, "1", 1.0, " 1 ", 0, "0.0"])]
    source = tmp_path / "numbers.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    set_params(project, {"ingest.source": raw_data(project, source), **JSONL_LABELS})
    ingest.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert list(table["label"].cat.categories) == ["0", "1"]
    assert table["label"].astype(str).tolist() == ["1", "1", "1", "1", "0", "0"]
    assert card["repaired"]["label_written_as_number"] == 2  # 1.0 and "0.0"; " 1 " was only stripped
    assert card["labels"] == {"0": 2, "1": 4}


def test_a_tab_inside_a_tsv_text_names_the_line_and_the_field_counts(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the default source names three columns (id, rating, text): a text holding a tab makes four fields
    raw_file(project).write_text("1\t1.0\ta fine\tfilm\n2\t-1.0\ta dull film\n")
    err = expect_user_error(ingest.main, capsys)
    assert err.endswith(
        "reviews.tsv: line 1: 4 tab-separated fields, expected 3 (ingest.column_names has 3); "
        "a text in a TSV file cannot contain a tab"
    ), err
    set_params(project, {"ingest.header": True, "ingest.column_names": None, "ingest.text_column": "text"})
    raw_file(project).write_text("id\trating\ttext\n1\t1.0\tfine\n2\t-1.0\ta dull\tfilm\n")
    assert "line 3: 4 tab-separated fields, expected 3 (the header (line 1) has 3)" in expect_user_error(
        ingest.main, capsys
    )


def test_bad_rows_drop_drops_empty_texts_and_missing_labels_and_lists_their_lines(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(i + 1, 1.0 if i % 2 else -1.0, f"a text number {i}") for i in range(20)]
    rows[3] = (4, 1.0, "   ")
    rows[7] = (8, "", "a text without a label")
    rows[11] = (12, -1.0, "")
    raw_file(project).write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    assert "line 4: empty text" in expect_user_error(ingest.main, capsys)  # the default: stop
    set_params(project, {"ingest.bad_rows": "drop"})
    ingest.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["rows_read"] == 20 and card["rows"] == len(table) == 17
    assert (card["dropped"]["empty_text"], card["dropped"]["missing_label"]) == (2, 1)
    assert card["dropped_rows"] == {"empty_text": ["reviews.tsv:line 4", "reviews.tsv:line 12"],
                                    "missing_label": ["reviews.tsv:line 8"]}  # fmt: skip
    assert table["source_row"].tolist() == [n for n in range(1, 21) if n not in (4, 8, 12)]


def test_undecodable_byte_names_the_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw_file(project).write_bytes(b"1\t1.0\tgood\n2\t-1.0\tbad \xff byte\n")
    err = expect_user_error(ingest.main, capsys)
    assert "reviews.tsv: line 2: bytes do not decode as utf-8" in err


def test_missing_column_is_named(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(project, {"ingest.text_column": "review"})
    err = expect_user_error(ingest.main, capsys)
    assert "reviews.tsv: no column 'review' (columns: id, rating, text" in err


def test_a_missing_slice_column_is_named(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(project, {"ingest.slice_column": "source"})
    err = expect_user_error(ingest.main, capsys)
    assert "reviews.tsv: no column 'source' (columns: id, rating, text" in err


def test_missing_file_is_named(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(project, {"ingest.source": "data/raw/nowhere/reviews.tsv"})
    err = expect_user_error(ingest.main, capsys)
    assert err == "error: data/raw/nowhere/reviews.tsv: file not found (from ingest.source)"


@pytest.mark.parametrize("outside", ["reviews.tsv", "../raw/reviews.tsv", "data/raw/../reviews.tsv", "hf:data"])
def test_a_local_source_outside_data_raw_is_refused_naming_the_key(
    project: Path, outside: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """dvc.yaml's ingest stage depends on data/raw/: a file anywhere else could change unseen by DVC."""
    (project / "reviews.tsv").write_text("1\t1.0\ta fine film\n")
    set_params(project, {"ingest.source": outside})
    err = expect_user_error(ingest.main, capsys)
    assert err.startswith(f"error: ingest.source: {outside} is outside data/raw/"), err
    assert not paths.INGESTED.exists()


def test_checksum_mismatch_stops_before_reading(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(project, {"ingest.sha256": "0" * 64})
    err = expect_user_error(ingest.main, capsys)
    actual = hashlib.sha256(raw_file(project).read_bytes()).hexdigest()
    assert f"reviews.tsv: checksum mismatch for ingest.source: expected sha256 {'0' * 64}, got {actual}" in err


def test_failed_run_keeps_the_previous_output(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ingest.main()
    before = (paths.INGESTED / "data.parquet").read_bytes()
    raw_file(project).write_text("1\t1.0\tgood\n2\t-1.0\t\n")
    expect_user_error(ingest.main, capsys)
    assert (paths.INGESTED / "data.parquet").read_bytes() == before
    assert sorted(p.name for p in paths.INGESTED.parent.iterdir()) == ["ingested", "raw"]  # no temporary folder
