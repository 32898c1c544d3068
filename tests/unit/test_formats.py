"""Every supported source format reaches the same normalised table by params alone: plain text
(fastText lines), one folder per class, a `datasets` folder from save_to_disk (a DatasetDict's splits
kept), and `hf:` datasets loaded with `datasets.load_dataset` (here from a local folder: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from builders import sentiment_rows
from helpers import expect_user_error, raw_data, set_params
from pipeline import paths
from stages import ingest, split

ROWS = [(("positive" if rating > 0 else "negative"), text) for rating, text in sentiment_rows(60, seed=5)]
PLAIN = {
    "ingest.format": None,
    "ingest.score_to_label": None,
    "ingest.column_names": None,
    "ingest.header": True,
    "ingest.label_column": "label",
    "ingest.text_column": "text",
}


def ingested() -> pd.DataFrame:
    ingest.main()
    return pd.read_parquet(paths.INGESTED / "data.parquet")


def test_fasttext_plain_text(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "train.txt"
    source.write_text("".join(f"__label__{label} {text}\n" for label, text in ROWS))
    set_params(project, {**PLAIN, "ingest.format": "text", "ingest.source": raw_data(project, source)})
    table = ingested()
    assert list(zip(table["label"].astype(str), table["text"])) == ROWS
    assert table["source_row"].tolist()[:3] == [1, 2, 3]


def test_fasttext_line_with_two_labels_is_an_error_for_single_label(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "train.txt"
    source.write_text("__label__positive a great film\n__label__positive __label__negative dull but great\n")
    set_params(project, {**PLAIN, "ingest.format": "text", "ingest.source": raw_data(project, source)})
    assert "train.txt: line 2: several labels" in expect_user_error(ingest.main, capsys)


def test_one_folder_per_class(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for number, (label, text) in enumerate(ROWS):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{number:03d}.txt").write_text(text + "\n")
    set_params(project, {**PLAIN, "ingest.format": "folder", "ingest.source": raw_data(project, root)})
    table = ingested()
    assert sorted(zip(table["label"].astype(str), table["text"])) == sorted(ROWS)
    assert table["source_row"].iloc[0].startswith(("negative/", "positive/"))


def test_undecodable_file_in_a_class_folder_is_named(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for label in ("negative", "positive"):
        (tmp_path / "corpus" / label).mkdir(parents=True)
        (tmp_path / "corpus" / label / "a.txt").write_text("fine text")
    (tmp_path / "corpus" / "positive" / "b.txt").write_bytes(b"caf\xe9")
    set_params(project, {**PLAIN, "ingest.format": "folder", "ingest.source": raw_data(project, tmp_path / "corpus")})
    assert "positive/b.txt: line 1: bytes do not decode as utf-8" in expect_user_error(ingest.main, capsys)


@pytest.fixture
def dataset_dict(tmp_path: Path) -> Path:
    from datasets import Dataset, DatasetDict

    frame = pd.DataFrame(ROWS, columns=["sentiment", "sentence"])
    parts = {"train": frame.iloc[:40], "dev": frame.iloc[40:50], "test": frame.iloc[50:]}
    DatasetDict({k: Dataset.from_pandas(v, preserve_index=False) for k, v in parts.items()}).save_to_disk(
        str(tmp_path / "dd")
    )
    return tmp_path / "dd"


def test_saved_dataset_dict_keeps_its_splits(project: Path, dataset_dict: Path) -> None:
    set_params(
        project,
        {
            **PLAIN,
            "ingest.format": "datasets",
            "ingest.source": raw_data(project, dataset_dict),
            "ingest.text_column": "sentence",
            "ingest.label_column": "sentiment",
            "ingest.splits": {"train": "train", "validation": "dev", "test": "test"},
        },
    )
    ingest.main()
    split.main()
    sizes = {name: len(pd.read_parquet(paths.SPLIT / f"{name}.parquet")) for name in paths.SPLITS}
    assert sizes == {"train": 40, "validation": 10, "test": 10}


def test_dataset_dict_without_named_splits_asks_for_them(
    project: Path, dataset_dict: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {**PLAIN, "ingest.format": "datasets", "ingest.source": raw_data(project, dataset_dict)})
    assert "a DatasetDict with splits ['train', 'dev', 'test']; name them in ingest.splits" in expect_user_error(
        ingest.main, capsys
    )


def test_hf_dataset_source_goes_through_load_dataset(project: Path, tmp_path: Path) -> None:
    folder = project / "data" / "raw" / "hub-like"
    folder.mkdir(parents=True)
    pd.DataFrame(ROWS[:45], columns=["label", "text"]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(ROWS[45:], columns=["label", "text"]).to_csv(folder / "test.csv", index=False)
    set_params(
        project,
        {
            **PLAIN,
            "ingest.format": "datasets",
            "ingest.source": "hf:data/raw/hub-like",  # a local folder, read by datasets.load_dataset
            "ingest.splits": {"train": "train", "validation": "test", "test": "test"},
            "split.overlap": "warn",
        },
    )
    table = ingested()
    assert len(table) == 45 + 15 + 15 and set(table["split"]) == {"train", "validation", "test"}
    assert json.loads((paths.INGESTED / "card.json").read_text())["source"] == "hf:data/raw/hub-like"


def test_unreachable_hf_dataset_is_a_one_line_error(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    set_params(project, {**PLAIN, "ingest.format": "datasets", "ingest.source": "hf:no-such-org/no-such-dataset"})
    assert "ingest.source: cannot load dataset hf:no-such-org/no-such-dataset" in expect_user_error(ingest.main, capsys)
