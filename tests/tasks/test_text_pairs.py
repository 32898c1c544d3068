"""Text pairs (`ingest.text_column: [first, second]`): both texts reach the model as one input
([CLS] a [SEP] b [SEP]), through training, evaluation, the registry's served model and batch prediction."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from builders import PAIR_PARAMS, pair_rows
from helpers import assert_onnx_matches_pytorch, expect_user_error, raw_data, set_params
from pipeline import data, paths, tracking
from pipeline.errors import PipelineError
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.serving import predict
from stages import evaluate, export, finetune, ingest, split, tokenize


@pytest.fixture
def pair_project(project: Path, tmp_path: Path) -> Path:
    source = tmp_path / "pairs.csv"
    pair_rows(400).to_csv(source, index=False)
    set_params(
        project,
        {
            **PAIR_PARAMS,
            "ingest.source": raw_data(project, source),
            "finetune.learning_rate": 5e-3,
            "finetune.num_train_epochs": 10,
            "finetune.early_stopping_patience": 10,
        },
    )
    return project / "data" / "raw" / source.name  # the project's copy, which tests edit


def test_both_texts_are_one_model_input(pair_project: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    for stage in (ingest, split, tokenize):
        stage.main()
    table = pd.read_parquet(paths.SPLIT / "train.parquet")
    assert list(table.columns[:2]) == [data.TEXT, data.TEXT_PAIR]
    first = data.load_tokenized(paths.TOKENIZED)["train"][0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert first["input_ids"] == tokenizer(table[data.TEXT][0], table[data.TEXT_PAIR][0])["input_ids"]
    assert first["input_ids"].count(tokenizer.sep_token_id) == 2


def test_pair_model_trains_serves_pairs_and_predicts_files(pair_project: Path, tmp_path: Path) -> None:
    for stage in (ingest, split, tokenize, finetune, export, evaluate):
        stage.main()
    assert_onnx_matches_pytorch()  # ONNX Runtime fp32 and int8 decide as PyTorch does
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.85, metrics  # the label is in the second text only
    local = Predictor(paths.MODEL)
    assert local.text_pair
    pairs = [["a dull film", "great and wonderful"], ["superb charming cast", "boring and tedious"]]
    expected = local.predict([a for a, _ in pairs], [b for _, b in pairs])
    with pytest.raises(PipelineError, match="reads text pairs"):
        local.predict(["only one text"])

    tracking.configure("sentiment-finetune")
    served = mlflow.pyfunc.load_model("models:/sentiment-classifier@challenger")
    runtime = served.unwrap_python_model().predictor.runtime  # the one evaluate chose; same Predictor code
    on_runtime = Predictor(paths.MODEL, runtime=runtime, export_dir=paths.ONNX)
    pd.testing.assert_frame_equal(
        served.predict(pairs), on_runtime.predict([a for a, _ in pairs], [b for _, b in pairs])
    )
    assert str(served.metadata.get_input_schema()) == "[Array(string) (required)]"

    batch = tmp_path / "pairs.csv"
    pd.DataFrame({"first": [a for a, _ in pairs], "second": [b for _, b in pairs]}).to_csv(batch, index=False)
    predict.run(
        [
            "--model",
            str(paths.MODEL),
            "--input",
            str(batch),
            "--output",
            str(tmp_path / "out.csv"),
            "--text-column",
            "first",
            "--pair-column",
            "second",
        ]
    )
    assert pd.read_csv(tmp_path / "out.csv")["predicted_label"].tolist() == expected["label"].tolist()
    with pytest.raises(PipelineError, match="--pair-column"):
        predict.run(
            [
                "--model",
                str(paths.MODEL),
                "--input",
                str(batch),
                "--output",
                str(tmp_path / "x.csv"),
                "--text-column",
                "first",
            ]
        )


def test_an_empty_second_text_names_its_column_and_row(pair_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = pd.read_csv(pair_project)
    table.loc[7, "reply"] = "  "
    table.to_csv(pair_project, index=False)
    assert "pairs.csv: line 9: empty text in column 'reply'" in expect_user_error(ingest.main, capsys)  # header: line 1
    assert not paths.INGESTED.exists()


def test_same_pair_with_two_labels_is_dropped_but_a_shared_first_text_is_not(pair_project: Path) -> None:
    table = pd.DataFrame(
        {
            "premise": ["the film", "the film", "the cast", "the cast"] + ["the plot"] * 2,
            "reply": ["great", "dull", "superb", "superb", "moving", "awful"],
            "label": ["agree", "disagree", "agree", "disagree", "agree", "disagree"],
        }
    )
    pd.concat([pd.read_csv(pair_project), table]).to_csv(pair_project, index=False)
    ingest.main()
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["dropped"]["conflicting_duplicate"] == 2  # ("the cast", "superb") with both labels
    kept = pd.read_parquet(paths.INGESTED / "data.parquet")
    assert ((kept[data.TEXT] == "the film") & kept[data.TEXT_PAIR].isin(["great", "dull"])).sum() == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ingest.text_column": ["premise"]}, "text_column: a text pair is two different columns"),
        ({"ingest.text_column": ["premise", "premise"]}, "text_column: a text pair is two different columns"),
        ({"tokenize.truncation": "chunk"}, "tokenize.truncation: text pairs are cut with head only"),
    ],
)
def test_pair_params_are_checked(changes: dict, message: str, pair_project: Path) -> None:
    with pytest.raises(PipelineError, match=message):
        load_params(overrides=changes)
