"""Token classification (NER) through the same six stages: CoNLL column files with predefined splits,
first-sub-token label alignment, entity-level seqeval metrics, entity spans from the served model, and the
CoNLL quality gates."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from builders import NER_PARAMS, conll_sentences, write_conll
from helpers import assert_onnx_matches_pytorch, expect_user_error, raw_data, set_params
from pipeline import data, paths, tracking
from pipeline.card import ModelCard
from pipeline.data.encoding import IGNORE_INDEX, TITLE_MARKER, UPPER_MARKER, in_context, mark_case
from pipeline.errors import PipelineError
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.tasks.tokens.prediction import predict_words
from stages import evaluate, export, finetune, ingest, report, split, tokenize


@pytest.fixture
def ner_project(project: Path, tmp_path: Path) -> Path:
    folder = write_conll(tmp_path / "conll")
    set_params(
        project,
        {
            **NER_PARAMS,
            "ingest.source": raw_data(project, folder),
            "finetune.learning_rate": 5e-3,
            "finetune.num_train_epochs": 6,
            "finetune.early_stopping_patience": 6,
        },
    )
    return Path("data/raw") / folder.name  # the project's copy, which tests edit (the working directory)


def test_predefined_splits_are_kept(ner_project: Path) -> None:
    ingest.main()
    split.main()
    sizes = {name: len(pd.read_parquet(paths.SPLIT / f"{name}.parquet")) for name in paths.SPLITS}
    assert sizes == {"train": 80, "validation": 20, "test": 20}
    assert json.loads((paths.SPLIT / "labels.json").read_text())["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    first = pd.read_parquet(paths.SPLIT / "train.parquet").iloc[0]
    assert first[data.SOURCE_ROW] == 3  # line of the first word, after -DOCSTART- and a blank line
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["rows"] == 120 and card["labels"]["PER"] == 120


def test_only_the_first_sub_token_of_a_word_carries_its_tag(ner_project: Path) -> None:
    for stage in (ingest, split, tokenize):
        stage.main()
    example = data.load_tokenized(paths.TOKENIZED)["train"][0]
    sentence = pd.read_parquet(paths.SPLIT / "train.parquet").iloc[0]
    labels = json.loads((paths.SPLIT / "labels.json").read_text())["labels"]
    carried = [labels[i] for i in example["labels"] if i != IGNORE_INDEX]
    assert carried == list(sentence[data.TAGS])  # one label per word, in order
    assert example["labels"][0] == IGNORE_INDEX and example["labels"][-1] == IGNORE_INDEX  # [CLS], [SEP]
    assert len(example["input_ids"]) > len(sentence[data.TOKENS]) + 2  # names split into sub-tokens


def test_ner_trains_scores_entities_and_serves_spans(ner_project: Path) -> None:
    for stage in (ingest, split, tokenize, finetune, export, evaluate, report):
        stage.main()
    assert_onnx_matches_pytorch()  # ONNX Runtime fp32 and int8 decide as PyTorch does
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"LOC", "PER"} and metrics["per_class"]["PER"]["support"] == 20
    assert metrics["f1"] >= 0.9, metrics  # the fixture is learnable: names and places are unambiguous
    pairs = pd.read_csv(paths.EVAL / "confusion.csv")
    assert set(pairs["actual"]) <= {"LOC", "PER", "O"} and (pairs["actual"] != "O").sum() == 40

    tracking.configure("sentiment-finetune")
    served = mlflow.pyfunc.load_model("models:/ner-tagger@challenger")
    text = "the film  Anna  visited New York"
    entities = served.predict([text])["entities"][0]
    assert [(e["type"], e["text"], text[e["start"] : e["end"]]) for e in entities] == [
        ("PER", "Anna", "Anna"),
        ("LOC", "New York", "New York"),
    ]
    assert served.predict([])["entities"].tolist() == []
    page = Path("reports/report.md").read_text()
    assert "| LOC |" in page and "word-feature logistic regression" in page and "| f1 |" in page
    errors = pd.read_csv(paths.EVAL / "errors.csv")  # type confusions with their sentences, if any
    assert (errors["kind"] == "confusion").all() and (errors["gold"] != errors["predicted"]).all()


def test_a_line_with_too_few_columns_names_its_line(ner_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_file = ner_project / "test.txt"
    lines = test_file.read_text().splitlines()
    lines[4] = "Oslo"
    test_file.write_text("\n".join(lines) + "\n")
    err = expect_user_error(ingest.main, capsys)
    assert f"{test_file}: line 5: 1 column(s)" in err and not paths.INGESTED.exists()


def test_i_tag_after_o_is_an_error_unless_repair_is_asked(
    ner_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = ner_project / "train.txt"
    train.write_text(train.read_text().replace("B-PER", "I-PER", 1))
    err = expect_user_error(ingest.main, capsys)
    assert "train.txt: line" in err and "'I-PER' does not continue an entity" in err and "repair_iob" in err
    assert not paths.INGESTED.exists()
    set_params(Path.cwd(), {"ingest.conll.repair_iob": True})
    ingest.main()
    assert json.loads((paths.INGESTED / "card.json").read_text())["repaired"]["iob_repaired"] == 1


def test_a_missing_split_file_is_named(ner_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ner_project / "valid.txt").unlink()
    assert "valid.txt: file not found (ingest.splits.validation)" in expect_user_error(ingest.main, capsys)


def test_task_and_format_must_agree(ner_project: Path) -> None:
    with pytest.raises(PipelineError, match=r"ingest.format: task token_classification needs conll"):
        load_params(overrides={"ingest.format": "tsv"})
    with pytest.raises(PipelineError, match=r"finetune.metric_for_best_model: macro_f1 is not a token_classification"):
        load_params(overrides={"finetune.metric_for_best_model": "macro_f1"})
    with pytest.raises(PipelineError, match=r"ingest.slice_column: CoNLL files have no columns"):
        load_params(overrides={"ingest.slice_column": "source"})


def test_document_context_surrounds_a_sentence_with_its_neighbours_in_the_same_document(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # each of these words is one token
    sentences = [["the", "film"], ["is", "a"], ["story"], ["cast"]]
    # max_length 7: [CLS] and [SEP] leave 5 tokens; "is a" leaves 3 for context, 1 before and 2 after.
    windows = in_context(sentences, [0, 0, 0, 1], tokenizer, max_length=7)
    assert windows == [
        (["the", "film", "is", "a", "story"], 0),
        (["film", "is", "a", "story"], 1),
        (["is", "a", "story"], 2),
        (["cast"], 0),
    ]
    assert in_context(sentences, None, tokenizer, max_length=7) == [(s, 0) for s in sentences]


def test_document_context_is_input_only_and_lifts_nothing_into_the_labels(project: Path, tmp_path: Path) -> None:
    folder = write_conll(tmp_path / "conll", document_size=4)
    set_params(
        project,
        {
            **NER_PARAMS,
            "ingest.source": raw_data(project, folder),
            "tokenize.context": "document",
            "tokenize.max_length": 64,
            "finetune.learning_rate": 5e-3,
            "finetune.num_train_epochs": 6,
            "finetune.early_stopping_patience": 6,
        },
    )
    for stage in (ingest, split, tokenize):
        stage.main()
    table = pd.read_parquet(paths.SPLIT / "train.parquet")
    assert table[data.DOCUMENT].tolist() == [i // 4 for i in range(80)]  # a -DOCSTART- every 4 sentences
    labels = json.loads((paths.SPLIT / "labels.json").read_text())["labels"]
    encoded = data.load_tokenized(paths.TOKENIZED)["train"]
    for index in range(8):
        carried = [labels[i] for i in encoded[index]["labels"] if i != IGNORE_INDEX]
        assert carried == list(table.iloc[index][data.TAGS])  # only the sentence's own words are labelled
    plain = sum(len(t) for t in table[data.TOKENS][:8])
    assert sum(sum(1 for _ in e["input_ids"]) for e in encoded.select(range(8))) > 2 * plain  # context was added

    for stage in (finetune, export, evaluate):
        stage.main()
    assert ModelCard.read(paths.MODEL).encoding.context == "document"
    assert json.loads((paths.EVAL / "metrics.json").read_text())["f1"] >= 0.9
    predictor = Predictor(paths.MODEL)
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    sentences = [list(t) for t in test[data.TOKENS]]
    in_documents = predict_words(predictor, sentences, test[data.DOCUMENT].tolist())
    assert [len(tags) for tags in in_documents] == [len(s) for s in sentences]
    assert predictor.predict(["Anna visited Rome"])["entities"][0][0]["type"] == "PER"  # raw text: no context


def test_only_sentences_that_lose_words_count_as_truncated_not_windows_filled_with_context(
    project: Path, tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    folder = write_conll(tmp_path / "conll", document_size=4)
    set_params(
        project,
        {
            **NER_PARAMS,
            "ingest.source": raw_data(project, folder),
            "tokenize.context": "document",
            "tokenize.max_length": 14,
        },
    )
    for stage in (ingest, split, tokenize):
        stage.main()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # the project's model (conftest)
    sentences = [list(t) for t in pd.read_parquet(paths.SPLIT / "train.parquet")[data.TOKENS]]
    # a sentence loses a word when its last word's first sub-token lies beyond [CLS] + 12 tokens
    too_long = sum(tokenizer(s, is_split_into_words=True).word_ids().index(len(s) - 1) > 12 for s in sentences)
    stats = json.loads((paths.TOKENIZED / "stats.json").read_text())
    assert 0 < stats["train"]["truncated"] == too_long
    full = sum(len(ids) == 14 for ids in data.load_tokenized(paths.TOKENIZED)["train"]["input_ids"])
    assert full > too_long  # most windows reach max_length with context, and are not counted


def test_case_markers_follow_capitalised_words_as_extra_sub_tokens_of_the_same_word(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    words = ["EU", "rejects", "German", "lamb", "3M", "I", "U.S."]
    marked = mark_case([words])[0]
    assert marked == [
        "EU" + UPPER_MARKER,
        "rejects",
        "German" + TITLE_MARKER,
        "lamb",
        "3M",
        "I" + TITLE_MARKER,
        "U.S." + UPPER_MARKER,
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # uncased, like MiniLM: "German" and "german" read alike
    plain, with_case = (tokenizer(w, is_split_into_words=True) for w in (words, marked))
    assert len(with_case["input_ids"]) == len(plain["input_ids"]) + 4  # one more sub-token per marked word

    def first_sub_tokens(encoded) -> list[int]:
        ids, word_ids = encoded["input_ids"], encoded.word_ids()
        return [ids[i] for i in range(len(ids)) if word_ids[i] is not None and word_ids[i] != word_ids[i - 1]]

    assert first_sub_tokens(with_case) == first_sub_tokens(plain)  # the tag-carrying sub-token is the word's own


def test_case_markers_are_applied_alike_in_training_and_prediction(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_conll(tmp_path / "conll")
    set_params(
        project,
        {
            **NER_PARAMS,
            "ingest.source": raw_data(project, folder),
            "tokenize.mark_case": True,
            # the markers (§, ¶) are single tokens of real BERT vocabularies but not of the tiny fixture one
            "tokenize.max_unknown_share": None,
            "finetune.num_train_epochs": 1,
        },
    )
    for stage in (ingest, split, tokenize, finetune):
        stage.main()
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    trained_on = data.load_tokenized(paths.TOKENIZED)["test"]["input_ids"]
    predictor = Predictor(paths.MODEL)
    unmarked = [
        len(ids)
        for ids in predictor.tokenizer([list(t) for t in test[data.TOKENS]], is_split_into_words=True)["input_ids"]
    ]
    assert sum(map(len, trained_on)) > sum(unmarked)  # the synthetic names are capitalised: markers were added

    assert predictor.encoding.mark_case
    seen: list[list[int]] = []
    forward = predictor.forward
    monkeypatch.setattr(predictor, "forward", lambda encoded: seen.extend(encoded) or forward(encoded))
    predict_words(predictor, [list(t) for t in test[data.TOKENS]])
    assert seen == [list(ids) for ids in trained_on]  # the model reads at prediction what it was trained on


def test_case_markers_are_for_token_tasks_only(project: Path) -> None:
    with pytest.raises(PipelineError, match="tokenize.mark_case: case markers are for token_classification"):
        load_params(overrides={"tokenize.mark_case": True})


def test_document_context_is_for_token_tasks_only(project: Path) -> None:
    with pytest.raises(PipelineError, match="tokenize.context: document context is for token_classification"):
        load_params(overrides={"tokenize.context": "document"})


def test_a_sentence_repeated_with_the_same_tags_is_one_example_and_conflicting_copies_are_dropped(
    project: Path, tmp_path: Path
) -> None:
    sentences = conll_sentences(60, seed=4)
    repeated, torn, cased = sentences[0], sentences[1], sentences[2]
    retagged = [(word, "O") for word, _ in torn]  # the same words, other tags
    assert retagged != torn
    recased = [(word.swapcase() if i == 0 else word, tag) for i, (word, tag) in enumerate(cased)]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in [*sentences, repeated, repeated, retagged, recased]:
        lines += [f"{word} NN I-NP {tag}" for word, tag in sentence] + [""]
    (tmp_path / "tweets").mkdir()
    (tmp_path / "tweets" / "all.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    set_params(project, {**NER_PARAMS, "ingest.source": raw_data(project, tmp_path / "tweets" / "all.txt"),
                         "ingest.splits": None})  # fmt: skip
    ingest.main()
    card = json.loads((paths.INGESTED / "card.json").read_text())
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    assert (card["dropped"]["duplicate"], card["dropped"]["conflicting_duplicate"]) == (2, 2)
    words = [tuple(tokens) for tokens in table["tokens"]]
    assert words.count(tuple(w for w, _ in repeated)) == 1 and tuple(w for w, _ in torn) not in words
    # a copy that differs in case is another sentence (case tells a name from a word)
    assert {tuple(w for w, _ in cased), tuple(w for w, _ in recased)} <= set(words)
    split.main()  # no sentence is in two splits now
