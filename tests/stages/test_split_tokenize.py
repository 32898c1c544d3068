"""split: stratified, seeded, leak-free; tokenize: truncated, unpadded, labelled by the label map."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from datasets import load_from_disk

from builders import write_sentiment_tsv
from helpers import expect_user_error, raw_data, set_params
from pipeline import paths
from stages import ingest, split, tokenize


def read_splits() -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(paths.SPLIT / f"{name}.parquet") for name in paths.SPLITS}


def test_split_is_stratified_and_covers_every_row_once(project: Path) -> None:
    ingest.main()
    split.main()
    parts = read_splits()
    assert {name: len(part) for name, part in parts.items()} == {"train": 96, "validation": 12, "test": 12}
    for part in parts.values():
        assert part["label"].astype(str).value_counts().tolist() == [len(part) // 2] * 2
    all_rows = pd.concat(parts.values())["source_row"]
    assert sorted(all_rows) == sorted(pd.read_parquet(paths.INGESTED / "data.parquet")["source_row"])
    assert json.loads((paths.SPLIT / "labels.json").read_text()) == {"labels": ["negative", "positive"]}


def test_same_seed_same_split_other_seed_other_split(project: Path) -> None:
    ingest.main()
    split.main()
    first = read_splits()["test"]["source_row"].tolist()
    split.main()
    assert read_splits()["test"]["source_row"].tolist() == first
    set_params(project, {"seed": 7})
    split.main()
    assert read_splits()["test"]["source_row"].tolist() != first


def test_texts_differing_only_in_case_or_spacing_never_cross_splits(project: Path, tmp_path: Path) -> None:
    extra = [(900 + i, 1.0, variant) for i, variant in enumerate(["A Twin Text", "a twin  text", "A TWIN TEXT "])]
    source = write_sentiment_tsv(tmp_path / "twins.tsv", n=120, extra=extra)
    set_params(project, {"ingest.source": raw_data(project, source)})
    ingest.main()
    split.main()
    hits = {
        name: part["text"].str.casefold().str.split().str.join(" ").eq("a twin text").sum()
        for name, part in read_splits().items()
    }
    assert sum(hits.values()) == 1


def test_a_class_too_small_to_split_is_named(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "rare.tsv"
    source.write_text("1\t1.0\tgood one\n2\t2.0\tgood two\n3\t1.5\tgood three\n4\t-1.0\tbad one\n5\t-2.0\tbad two\n")
    set_params(project, {"ingest.source": raw_data(project, source)})
    ingest.main()
    err = expect_user_error(split.main, capsys)
    assert "data/ingested/data.parquet: class 'negative' has 2 example(s); a stratified split needs at least 3" in err
    assert not paths.SPLIT.exists()


def test_tokenize_truncates_but_never_pads(project: Path, tmp_path: Path) -> None:
    long_text = " ".join(["great"] * 100)
    source = write_sentiment_tsv(tmp_path / "long.tsv", n=60, extra=[(999, 2.0, long_text)])
    set_params(project, {"ingest.source": raw_data(project, source), "tokenize.max_length": 16})
    ingest.main()
    split.main()
    tokenize.main()
    datasets = load_from_disk(str(paths.TOKENIZED))
    lengths = [len(ids) for name in paths.SPLITS for ids in datasets[name]["input_ids"]]
    assert max(lengths) == 16  # the long text is cut at max_length ...
    assert min(lengths) < 16  # ... and short ones keep their own length: no padding on disk
    assert all(0 not in ids for name in paths.SPLITS for ids in datasets[name]["input_ids"])  # [PAD] id is 0
    train = datasets["train"]
    assert train["length"] == [len(ids) for ids in train["input_ids"]]
    expected = pd.read_parquet(paths.SPLIT / "train.parquet")["label"].astype(str).map({"negative": 0, "positive": 1})
    assert train["labels"] == expected.tolist()
    stats = json.loads((paths.TOKENIZED / "stats.json").read_text())
    assert sum(s["truncated"] for s in stats.values()) == 1


@pytest.fixture
def predefined(project: Path, tmp_path: Path) -> Path:
    """Three TSV files in the default raw format, as a dataset with a published split."""
    folder = tmp_path / "published"
    folder.mkdir()
    for offset, (name, n) in enumerate((("train.tsv", 60), ("dev.tsv", 20), ("test.tsv", 20))):
        write_sentiment_tsv(folder / name, n=n, seed=10 + offset)
    set_params(
        project,
        {
            "ingest.source": raw_data(project, folder),
            "ingest.splits": {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
        },
    )
    return project / "data" / "raw" / folder.name  # the project's copy, which tests edit


def test_predefined_splits_are_kept_not_resplit(predefined: Path) -> None:
    ingest.main()
    split.main()
    for name, file in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        part = pd.read_parquet(paths.SPLIT / f"{name}.parquet")
        raw = pd.read_csv(predefined / file, sep="\t", header=None)
        assert part["text"].tolist() == raw[2].tolist()


def test_a_text_in_two_predefined_splits_is_an_error_or_a_counted_warning(
    predefined: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = (predefined / "train.tsv").read_text().splitlines()[0].split("\t")[2]
    with (predefined / "test.tsv").open("a") as fh:
        fh.write(f"999\t1.5\t{shared.upper()}\r\n")  # differs only in case: still the same text
    ingest.main()
    err = expect_user_error(split.main, capsys)
    assert "is in both train and test" in err and "split.overlap: warn" in err and not paths.SPLIT.exists()
    set_params(project, {"split.overlap": "warn"})
    split.main()
    assert json.loads((paths.SPLIT / "card.json").read_text())["overlap"] == {"test_in_train": 1}


def test_fixture_words_are_in_the_tiny_vocabulary(project: Path, tiny_model: Path) -> None:
    """Guards the fixtures themselves: a tokenizer that maps words to [UNK] makes every model learn nothing."""
    from transformers import AutoTokenizer

    for stage in (ingest, split, tokenize):
        stage.main()
    unk = AutoTokenizer.from_pretrained(tiny_model).unk_token_id
    assert all(unk not in ids for ids in load_from_disk(str(paths.TOKENIZED))["train"]["input_ids"])


def test_data_the_model_cannot_read_stops_tokenize_naming_the_model_the_share_and_an_example(
    project: Path, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Chinese reviews for the tiny English vocabulary: every character is [UNK], as with the default MiniLM
    rows = [(i + 1, 1.0 if i % 2 else -1.0, "这部电影" + "很好看" * (i % 3 + 1) + str(i)) for i in range(40)]
    source = tmp_path / "chinese.tsv"
    source.write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows), encoding="utf-8")
    set_params(project, {"ingest.source": raw_data(project, source)})
    ingest.main()
    split.main()
    with pytest.raises(SystemExit) as stopped:
        tokenize.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars of the encoding it checks
    assert err.startswith("error: tokenize: 100% of the train tokens are its unknown token")
    assert "(tokenize.max_unknown_share 0.1): " in err
    assert f"model.source {tiny_model} cannot read this data, e.g. '这部电影" in err
    assert not paths.TOKENIZED.exists()
    set_params(project, {"tokenize.max_unknown_share": None})  # count only
    tokenize.main()
    stats = json.loads((paths.TOKENIZED / "stats.json").read_text())
    assert {name: s["unknown_token_share"] for name, s in stats.items()} == dict.fromkeys(paths.SPLITS, 1.0)


def test_the_fixture_data_has_no_unknown_tokens(project: Path) -> None:
    ingest.main()
    split.main()
    tokenize.main()
    stats = json.loads((paths.TOKENIZED / "stats.json").read_text())
    assert all(s["unknown_token_share"] == 0 and s["inputs_without_tokens"] == 0 for s in stats.values())


def test_tokenize_max_chars_cuts_long_texts_counts_them_and_the_model_card_carries_it(
    project: Path, tmp_path: Path
) -> None:
    long_text = " ".join(["great"] * 40)  # 239 characters
    source = write_sentiment_tsv(tmp_path / "long.tsv", n=60, extra=[(999, 2.0, long_text)])
    set_params(project, {"ingest.source": raw_data(project, source), "tokenize.max_chars": 60})
    ingest.main()
    split.main()
    tokenize.main()
    stats = json.loads((paths.TOKENIZED / "stats.json").read_text())
    tables = read_splits()
    assert {n: s["cut_to_max_chars"] for n, s in stats.items()} == {
        n: int((t["text"].str.len() > 60).sum()) for n, t in tables.items()
    }
    assert sum(s["cut_to_max_chars"] for s in stats.values()) >= 1
    name = next(n for n, t in tables.items() if long_text in set(t["text"]))
    row = tables[name]["text"].tolist().index(long_text)
    ids = load_from_disk(str(paths.TOKENIZED))[name]["input_ids"][row]
    assert len(ids) == 2 + 10  # [CLS], the ten "great" of its first 60 characters, [SEP]
