"""Fine-tuning methods side by side on the default data and model, plus training from scratch and
label efficiency. Every run goes through the finetune stage's own `prepare` and `fit` and the Predictor
evaluate uses, each in a fresh process (so its peak RSS is its own), on the data `dvc repro` prepared.

    dvc repro tokenize                       # the default data, tokenized
    python -m benchmarks.compare_methods     # all three parts (about 45 min on 2 CPU cores)
    python -m benchmarks.compare_methods --part methods

Runs are listed in benchmarks/methods.yaml. Results go to reports/benchmarks/{methods,scratch,
label_efficiency}.json, which the report stage renders (tables and the label-efficiency plot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.results import OUT, load_average, write_results
from pipeline import data, paths
from pipeline.evaluation.assessment import score
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.tasks.scoring import SCORINGS
from pipeline.training.trainer import fit, prepare

ROOT = Path(__file__).resolve().parents[1]

RUNS = Path(__file__).with_name("methods.yaml")


def run_one(overrides: dict[str, Any], train_size: int | None) -> dict[str, Any]:
    """Train with `overrides` on `train_size` examples (None: all) and score on the test split."""
    params = load_params(overrides=overrides)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    datasets = data.load_tokenized(paths.TOKENIZED)
    train_table = data.read_table(paths.SPLIT / "train.parquet")
    test_table = data.read_table(paths.SPLIT / "test.parquet")
    row: dict[str, Any] = {}
    if train_size is not None:
        # Tokenized rows are the split's rows in order (head truncation), so one index picks both.
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(
            list(range(len(train_table))),
            train_size=train_size,
            random_state=params.seed,
            stratify=train_table[data.LABEL],
        )
        keep = sorted(keep)
        datasets["train"] = datasets["train"].select(keep)
        task = SCORINGS.for_task(params.task)
        baseline = task.test_metrics(
            *task.baseline_outcomes(train_table.iloc[keep], test_table, labels, params.evaluate.baseline), labels
        )
        row["baseline_accuracy"] = baseline["accuracy"]
        row["baseline_macro_f1"] = baseline["macro_f1"]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(params, datasets, labels, Path(tmp) / "checkpoints")
        fitted = fit(params, prepared, Path(tmp) / "model").training
        metrics, _ = score(Predictor(Path(tmp) / "model"), test_table)
    return {
        "train_examples": len(datasets["train"]),
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "best_validation_accuracy": fitted.best_metric,
        "epochs_run": round(
            fitted.global_step / max(1, -(-len(datasets["train"]) // params.finetune.per_device_train_batch_size)), 2
        ),
        "trainable_params": fitted.trainable_params,
        "total_params": fitted.total_params,
        "train_seconds": fitted.train_seconds,
        "peak_rss_mib": fitted.peak_rss_mib,
        "artifact_mb": round(fitted.artifact_bytes / 2**20, 2),
        "trained_mb": round(fitted.trained_bytes / 2**20, 2),
        **row,
    }


def in_child(name: str, overrides: dict[str, Any], train_size: int | None) -> dict[str, Any]:
    """run_one in a fresh interpreter: its peak RSS and its import state are its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        spec = json.dumps({"overrides": overrides, "train_size": train_size, "out": out.name})
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.compare_methods", "--child", spec], cwd=ROOT, check=True)
        result = json.loads(Path(out.name).read_text())
    # Other work on the machine would slow a run down: the load average shows whether it ran alone.
    load = load_average()
    print(
        f"{name}: test accuracy {result['test_accuracy']:.4f}, {result['train_seconds']} s training, "
        f"{time.perf_counter() - started:.0f} s in all, load average {load}",
        flush=True,
    )
    return {"name": name, "overrides": overrides, **result, "load_average_1m": load}


def label_efficiency_overrides(size: int) -> dict[str, Any]:
    return {"finetune.num_train_epochs": min(30, max(3, 4096 // size)), "finetune.early_stopping_patience": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["methods", "scratch", "label_efficiency", "all"], default="all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.child:
        spec = json.loads(args.child)
        Path(spec["out"]).write_text(json.dumps(run_one(spec["overrides"], spec["train_size"])))
        return
    runs = yaml.safe_load(RUNS.read_text())
    parts = ["methods", "scratch", "label_efficiency"] if args.part == "all" else [args.part]
    for part in parts:
        started = time.perf_counter()
        if part == "label_efficiency":
            total = len(data.read_table(paths.SPLIT / "train.parquet"))
            sizes = [total if s == "all" else int(s) for s in runs[part]["sizes"]]
            rows = [
                in_child(f"n={n}", label_efficiency_overrides(n), n) if n < total else _all_labels_row() for n in sizes
            ]
        else:
            rows = [in_child(name, overrides or {}, None) for name, overrides in runs[part].items()]
        write_results(part, f"python -m benchmarks.compare_methods --part {part}", rows, started)


def _all_labels_row() -> dict[str, Any]:
    """Every training label: the methods table's `full` run is exactly this run (same params), so it is
    reused rather than trained again; trained here when that table does not exist yet."""
    methods = OUT / "methods.json"
    rows = (
        [r for r in json.loads(methods.read_text())["rows"] if r["name"] == "full" and not r["overrides"]]
        if methods.is_file()
        else []
    )
    row = dict(rows[0], name="n=all") if rows else in_child("n=all", {}, None)
    params = load_params()
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    task = SCORINGS.for_task(params.task)
    train, test = data.read_table(paths.SPLIT / "train.parquet"), data.read_table(paths.SPLIT / "test.parquet")
    baseline = task.test_metrics(*task.baseline_outcomes(train, test, labels, params.evaluate.baseline), labels)
    return {**row, "baseline_accuracy": baseline["accuracy"], "baseline_macro_f1": baseline["macro_f1"]}


if __name__ == "__main__":
    main()
