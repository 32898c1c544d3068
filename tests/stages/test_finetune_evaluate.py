"""finetune + evaluate on a tiny random model: outputs, MLflow records, registry alias, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from builders import copy_of, project_run_through
from helpers import expect_user_error, raw_data, set_params
from pipeline import paths, tracking
from pipeline.card import ModelCard
from pipeline.prediction.inference import Predictor
from stages import evaluate, export, finetune, ingest, report, split, tokenize


def run_through_evaluate() -> dict:
    for stage in (ingest, split, tokenize, finetune, export, evaluate):
        stage.main()
    return json.loads((paths.EVAL / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evaluated_project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A tiny project run through evaluate once for the module; `evaluated` gives each test its own copy."""
    return project_run_through(
        tmp_path_factory.mktemp("evaluated"), tiny_model, (ingest, split, tokenize, finetune, export, evaluate)
    )


@pytest.fixture
def evaluated(evaluated_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    copy_of(evaluated_project, tmp_path, monkeypatch)
    return json.loads((paths.EVAL / "metrics.json").read_text())


def test_model_folder_is_complete(evaluated: dict) -> None:
    files = {p.name for p in paths.MODEL.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "training.json"} <= files
    card = ModelCard.read(paths.MODEL)
    config = json.loads((paths.MODEL / "config.json").read_text())
    assert card.labels == ["negative", "positive"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert card.training.global_step > 0 and card.training.best_checkpoint_step is not None
    assert not paths.CHECKPOINTS.exists()  # checkpoints are cleaned once the model is saved
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in paths.MODEL.iterdir()} == dict.fromkeys(files, 0o666 & ~umask)


def test_dvc_plots_hold_per_step_loss_and_per_epoch_validation(evaluated: dict) -> None:
    loss = pd.read_csv(paths.TRAIN_LOGS / "plots/metrics/train/loss.tsv", sep="\t")
    accuracy = pd.read_csv(paths.TRAIN_LOGS / "plots/metrics/eval/accuracy.tsv", sep="\t")
    steps = ModelCard.read(paths.MODEL).training.global_step
    assert loss["step"].tolist() == list(range(2, steps + 1, 2))  # logging_steps: 2
    assert len(accuracy) == 2 and accuracy["step"].iloc[-1] == steps  # one row per epoch
    assert (
        json.loads((paths.TRAIN_LOGS / "metrics.json").read_text())["eval"]["accuracy"] == accuracy["accuracy"].iloc[-1]
    )


def test_test_metrics_are_sliced_by_a_column_carried_through_ingest(project: Path, tmp_path: Path) -> None:
    from builders import sentiment_rows

    rows = sentiment_rows(120)
    raw = pd.DataFrame(
        {
            "rating": [r for r, _ in rows],
            "text": [t for _, t in rows],
            "source": [("blog", "press", "forum")[i % 3] if i % 10 else None for i in range(len(rows))],
        }
    )
    raw.to_csv(tmp_path / "sourced.csv", index=False)
    set_params(
        project,
        {
            "ingest.source": raw_data(project, tmp_path / "sourced.csv"),
            "ingest.format": "csv",
            "ingest.header": True,
            "ingest.column_names": None,
            "ingest.slice_column": "source",
        },
    )
    metrics = run_through_evaluate()
    report.main()
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    confusion = pd.read_csv(paths.EVAL / "confusion.csv")  # one row per test text, in test order
    by_source = metrics["slices_by_column"]
    assert by_source["column"] == "source"
    assert set(by_source["slices"]) == set(test["slice"]) <= {"blog", "press", "forum", "(missing)"}
    for value, scores in by_source["slices"].items():
        rows_of_value = (test["slice"] == value).to_numpy()
        assert scores["examples"] == rows_of_value.sum()
        right = (confusion["actual"] == confusion["predicted"]).to_numpy()[rows_of_value]
        assert scores["accuracy"] == pytest.approx(right.mean())
    assert "### By source" in Path("reports/report.md").read_text()


def test_test_metrics_match_the_predictions(evaluated: dict) -> None:
    confusion = pd.read_csv(paths.EVAL / "confusion.csv")
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    assert confusion["actual"].tolist() == test["label"].astype(str).tolist()
    assert evaluated["accuracy"] == pytest.approx((confusion["actual"] == confusion["predicted"]).mean())
    assert set(evaluated["per_class"]) == {"negative", "positive"}
    assert {"macro_f1", "micro_f1", "weighted_f1"} <= set(evaluated)


def test_mlflow_run_has_params_step_metrics_and_provenance(evaluated: dict) -> None:
    card = ModelCard.read(paths.MODEL)
    tracking.configure("sentiment-finetune")
    client = mlflow.MlflowClient()
    run = client.get_run(card.provenance.mlflow_run_id)
    assert run.data.params["finetune.learning_rate"] == "0.001"
    assert (
        run.data.tags["data_sha256"]
        == card.provenance.data_sha256
        == tracking.hash_files([paths.SPLIT / n for n in ("train.parquet", "validation.parquet", "labels.json")])
    )
    assert "git_commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == card.training.global_step // 2 and len({m.step for m in history}) == len(history)
    assert run.data.metrics["test_accuracy"] == pytest.approx(evaluated["accuracy"])


def test_registered_challenger_predicts_labels_for_raw_texts(evaluated: dict) -> None:
    registry = json.loads((paths.EVAL / "registry.json").read_text())
    tracking.configure("sentiment-finetune")
    version = mlflow.MlflowClient().get_model_version_by_alias("sentiment-classifier", "challenger")
    assert str(version.version) == registry["version"] == "1"
    assert version.tags["test_accuracy"] == f"{evaluated['accuracy']:.6f}"
    served = mlflow.pyfunc.load_model("models:/sentiment-classifier@challenger")
    texts = ["a great and wonderful film", "dull boring plot", "the cast"]
    predicted = served.predict(texts)
    assert predicted["label"].isin(["negative", "positive"]).all() and len(predicted) == 3
    # It runs the runtime evaluate chose (int8 ONNX unless that cost accuracy), through the same Predictor.
    local = Predictor(paths.MODEL, runtime=version.tags["runtime"], export_dir=paths.ONNX).predict(texts)
    pd.testing.assert_frame_equal(predicted, local)


def test_same_seed_gives_identical_test_metrics(project: Path) -> None:
    first = run_through_evaluate()
    finetune.main()
    export.main()
    evaluate.main()
    second = json.loads((paths.EVAL / "metrics.json").read_text())
    assert second == first
    assert json.loads((paths.EVAL / "registry.json").read_text())["version"] == "2"  # each evaluate registers


def test_missing_tokenized_data_is_a_one_line_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ingest.main()
    split.main()
    err = expect_user_error(finetune.main, capsys)
    assert "data/tokenized" in err
    assert not paths.MODEL.exists()


def test_evaluate_after_the_tracking_store_was_lost_opens_a_new_run(evaluated: dict) -> None:
    Path("mlflow.db").unlink()
    # A new process, as under `dvc repro`: this one still holds a connection to the deleted database.
    subprocess.run([sys.executable, "-m", "stages.evaluate"], check=True, capture_output=True)
    registry = json.loads((paths.EVAL / "registry.json").read_text())
    finetune_run = ModelCard.read(paths.MODEL).provenance.mlflow_run_id
    read_tags = (
        f"import json, mlflow; from pipeline import tracking; tracking.configure('sentiment-finetune'); "
        f"print(json.dumps(mlflow.MlflowClient().get_run('{registry['run_id']}').data.tags))"
    )
    tags = json.loads(
        subprocess.run([sys.executable, "-c", read_tags], check=True, capture_output=True, text=True).stdout
    )
    assert registry["run_id"] != finetune_run and registry["version"] == "1"
    assert tags["finetune_run_id"] == finetune_run
    assert tags["data_sha256"] == ModelCard.read(paths.MODEL).provenance.data_sha256


def test_test_metrics_carry_intervals_and_the_comparison_with_the_baseline(evaluated: dict) -> None:
    baseline = json.loads((paths.EVAL / "baseline.json").read_text())
    for metrics in (evaluated, baseline):
        for name in ("accuracy", "macro_f1", "micro_f1", "weighted_f1"):
            low, high = metrics["ci95"][name]
            assert low <= metrics[name] <= high and high - low > 0, (name, metrics[name], low, high)
    versus = evaluated["vs_baseline"]
    assert versus["metric"] == "accuracy"
    assert versus["difference"] == pytest.approx(evaluated["accuracy"] - baseline["accuracy"])
    assert versus["ci95"][0] <= versus["difference"] <= versus["ci95"][1] and 0 < versus["p_value"] <= 1
    assert versus["beats_baseline"] == (versus["difference"] > 0 and versus["p_value"] < 0.05)
    assert isinstance(evaluated["flags"], list)
    run_id = json.loads((paths.EVAL / "registry.json").read_text())["run_id"]
    tracking.configure("sentiment-finetune")
    logged = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert logged["test_accuracy_ci95_low"] == evaluated["ci95"]["accuracy"][0]
    assert logged["baseline_accuracy"] == baseline["accuracy"]
    outcomes = mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation/outcomes.json")
    assert len(outcomes["true"]) == len(outcomes["pred"]) == len(pd.read_parquet(paths.SPLIT / "test.parquet"))


def test_the_report_opens_with_the_verdict_and_shows_intervals(evaluated: dict) -> None:
    from stages import report

    report.main()
    text = Path("reports/report.md").read_text()
    first = text.split("\n\n")[1]
    assert first.startswith("**Verdict:** the fine-tuned model ") and ", p = " in first
    assert evaluated["vs_baseline"]["verdict"] in first
    low, high = evaluated["ci95"]["accuracy"]
    assert f"{evaluated['accuracy']:.4f} [{low:.3f}, {high:.3f}]" in text
    # what tokenize counted of what the model cannot read, from data/tokenized/stats.json
    assert "Tokens the model cannot read (its unknown token): train 0.00%, validation 0.00%, test 0.00%" in text


def test_curves_calibration_slices_and_errors_are_written(evaluated: dict) -> None:
    from scipy.special import softmax

    assert 0 <= evaluated["roc_auc_micro"] <= 1 and 0 <= evaluated["average_precision_macro"] <= 1
    calibration = evaluated["calibration"]
    assert 0 <= calibration["ece"] <= 1 and 0 <= calibration["ece_uncalibrated"] <= 1
    card = ModelCard.read(paths.MODEL)
    assert calibration["temperature"] == card.temperature > 0 and card.temperature != 1.0
    for kind, columns in (("roc", ["fpr", "tpr"]), ("pr", ["recall", "precision"])):
        files = sorted(p.name for p in (paths.EVAL / "plots" / kind).glob("*.csv"))
        assert files == ["micro.csv", "negative.csv", "positive.csv"], files
        assert list(pd.read_csv(paths.EVAL / "plots" / kind / "micro.csv").columns) == columns
    assert list(pd.read_csv(paths.EVAL / "plots/calibration/reliability.csv").columns) == [
        "bin",
        "confidence",
        "accuracy",
        "count",
    ]
    slices = evaluated["slices"]
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    assert sum(s["examples"] for s in slices.values()) == len(test) and all("accuracy" in s for s in slices.values())
    errors = pd.read_csv(paths.EVAL / "errors.csv")
    assert list(errors.columns) == ["kind", "class", "text", "gold", "predicted", "score"]
    wrong = errors[errors["kind"] == "most confident wrong"]
    assert (wrong["gold"] != wrong["predicted"]).all()
    # Served scores are the calibrated ones: softmax of the logits over the card's temperature.
    predictor = Predictor(paths.MODEL)
    texts = test["text"].head(5).tolist()
    expected = softmax(predictor.logits(texts) / card.temperature, axis=1).max(axis=1)
    np.testing.assert_allclose(predictor.predict(texts)["score"], expected, rtol=1e-5)
