"""Multi-label classification: label sets from a list column or a delimited string (0..n labels per
text), BCE training with a global or per-label tuned threshold, micro/macro F1, subset accuracy and a
per-label report, through the same stages."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from builders import label_set_rows
from helpers import assert_onnx_matches_pytorch, expect_user_error, raw_data, set_params
from pipeline import paths, tracking
from pipeline.card import ModelCard
from stages import evaluate, export, finetune, ingest, report, split, tokenize


@pytest.fixture
def multilabel(project: Path, tmp_path: Path) -> Path:
    source = tmp_path / "sets.jsonl"
    source.write_text("".join(json.dumps({"text": t, "topics": labels}) + "\n" for t, labels in label_set_rows(240)))
    set_params(
        project,
        {
            "task": "multi_label_classification",
            "ingest.source": raw_data(project, source),
            "ingest.format": "jsonl",
            "ingest.label_column": "topics",
            "ingest.score_to_label": None,
            "ingest.column_names": None,
            "finetune.metric_for_best_model": "micro_f1",
            "finetune.learning_rate": 2e-3,
            "finetune.num_train_epochs": 10,
            "finetune.early_stopping_patience": 10,
        },
    )
    return source


def test_list_column_and_delimited_string_give_the_same_label_sets(
    multilabel: Path, project: Path, tmp_path: Path
) -> None:
    ingest.main()
    from_list = pd.read_parquet(paths.INGESTED / "data.parquet")
    csv_file = tmp_path / "sets.csv"
    pd.DataFrame(
        {"text": [t for t, _ in label_set_rows(240)], "topics": ["|".join(labels) for _, labels in label_set_rows(240)]}
    ).to_csv(csv_file, index=False)
    set_params(
        project,
        {
            "ingest.source": raw_data(project, csv_file),
            "ingest.format": "csv",
            "ingest.header": True,
            "ingest.label_delimiter": "|",
        },
    )
    ingest.main()
    from_csv = pd.read_parquet(paths.INGESTED / "data.parquet")
    assert from_list["label"].map(list).tolist() == from_csv["label"].map(list).tolist()
    assert from_csv["label"].map(len).value_counts().to_dict() == {0: 60, 1: 120, 2: 60}  # empty sets kept
    assert json.loads((paths.INGESTED / "labels.json").read_text())["labels"] == ["complaint", "praise"]


def test_every_label_lands_in_every_split(multilabel: Path) -> None:
    ingest.main()
    split.main()
    card = json.loads((paths.SPLIT / "card.json").read_text())
    for name in paths.SPLITS:
        assert card[name]["labels"]["praise"] > 0 and card[name]["labels"]["complaint"] > 0


def test_trains_with_bce_and_tuned_thresholds_and_reports_set_metrics(multilabel: Path, project: Path) -> None:
    set_params(project, {"finetune.tune_thresholds": True})
    for stage in (ingest, split, tokenize, finetune, export, evaluate, report):
        stage.main()
    assert_onnx_matches_pytorch()  # ONNX Runtime fp32 and int8 decide as PyTorch does
    thresholds = ModelCard.read(paths.MODEL).thresholds
    assert len(thresholds) == 2 and all(0.05 <= t <= 0.95 for t in thresholds)
    assert json.loads((paths.MODEL / "config.json").read_text())["problem_type"] == "multi_label_classification"
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert {"micro_f1", "macro_f1", "weighted_f1", "subset_accuracy"} <= set(metrics)
    assert set(metrics["per_class"]) == {"complaint", "praise"}
    assert metrics["micro_f1"] >= 0.7, metrics  # learnt: predicting no label scores 0, every label about 0.67
    tracking.configure("sentiment-finetune")
    served = mlflow.pyfunc.load_model("models:/sentiment-classifier@challenger")
    predicted = served.predict(["a great film", "the plot", "a great but awful film", "dull"])
    for _, row in predicted.iterrows():  # a label is predicted exactly when its probability reaches its threshold
        expected = [label for label, t in zip(["complaint", "praise"], thresholds) if row[f"score_{label}"] >= t]
        assert list(row["labels"]) == expected
    assert "subset_accuracy" in Path("reports/report.md").read_text()


def test_global_threshold_is_used_for_every_label(multilabel: Path, project: Path) -> None:
    set_params(project, {"finetune.threshold": 0.3, "finetune.max_steps": 2})
    for stage in (ingest, split, tokenize, finetune):
        stage.main()
    assert ModelCard.read(paths.MODEL).thresholds == [0.3, 0.3]


def test_label_outside_the_declared_set_is_named(
    multilabel: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {"ingest.labels": ["praise"]})
    err = expect_user_error(ingest.main, capsys)
    assert "sets.jsonl: line 3: label 'complaint' is not in ingest.labels" in err
