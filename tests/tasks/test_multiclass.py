"""Multi-class classification (three string labels from a JSON Lines file) through the same stages:
per-class metrics, macro/micro/weighted averages, and a served model scoring every class."""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from builders import FILLER, NEGATIVE, POSITIVE
from helpers import assert_onnx_matches_pytorch, raw_data, set_params
from pipeline import paths, tracking
from stages import evaluate, export, finetune, ingest, report, split, tokenize

CLASSES = {"praise": POSITIVE, "complaint": NEGATIVE, "neutral": []}


def write_topics(path: Path, n: int = 240, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines, seen = [], set()
    while len(lines) < n:
        label = list(CLASSES)[len(lines) % 3]
        words = rng.sample(FILLER, rng.randint(3, 8)) + rng.sample(CLASSES[label] or FILLER, 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            lines.append(json.dumps({"review": text, "kind": label}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def topics(project: Path, tmp_path: Path) -> Path:
    source = write_topics(tmp_path / "topics.jsonl")
    set_params(
        project,
        {
            "ingest.source": raw_data(project, source),
            "ingest.format": "jsonl",
            "ingest.text_column": "review",
            "ingest.label_column": "kind",
            "ingest.score_to_label": None,
            "ingest.column_names": None,
            "finetune.learning_rate": 5e-3,
            "finetune.num_train_epochs": 5,
            "finetune.early_stopping_patience": 5,
            "finetune.metric_for_best_model": "macro_f1",
        },
    )
    return source


def test_three_classes_get_per_class_metrics_and_averages(topics: Path) -> None:
    for stage in (ingest, split, tokenize, finetune, export, evaluate, report):
        stage.main()
    assert_onnx_matches_pytorch()  # ONNX Runtime fp32 and int8 decide as PyTorch does
    assert json.loads((paths.SPLIT / "labels.json").read_text())["labels"] == ["complaint", "neutral", "praise"]
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"complaint", "neutral", "praise"}
    assert {"accuracy", "macro_f1", "micro_f1", "weighted_f1"} <= set(metrics)
    assert metrics["micro_f1"] == pytest.approx(metrics["accuracy"])  # single-label: micro F1 is accuracy
    assert sum(c["support"] for c in metrics["per_class"].values()) == len(
        pd.read_parquet(paths.SPLIT / "test.parquet")
    )
    assert metrics["macro_f1"] >= 0.8, metrics
    tracking.configure("sentiment-finetune")
    served = mlflow.pyfunc.load_model("models:/sentiment-classifier@challenger").predict(["a great film", "the plot"])
    assert {"score_complaint", "score_neutral", "score_praise"} <= set(served.columns)
    assert served[["score_complaint", "score_neutral", "score_praise"]].sum(axis=1).to_numpy() == pytest.approx([1, 1])
    assert "| neutral |" in Path("reports/report.md").read_text()
