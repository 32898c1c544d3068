"""What evaluate measures of a fine-tuned model on the test split: its task's test metrics with bootstrap
intervals, the paired test against the classical baseline, curves and calibration, slices, the errors
worth reading, the runtimes side by side and, for decoders, the prompting baselines. Registering is
pipeline/registry/registration.py; stages/evaluate.py writes, logs and registers what `assess` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data, paths
from pipeline.card import ModelCard
from pipeline.data.sources import tree_sha256
from pipeline.errors import PipelineError
from pipeline.evaluation.statistics import (
    PairedComparison,
    bootstrap_intervals,
    curves,
    paired_bootstrap,
    reliability,
    under_predicted,
)
from pipeline.prediction.inference import Predictor
from pipeline.prediction.runtimes import ONNX_FILES, TORCH, machine, read_export_card, timed_outcomes
from pipeline.schema import ExportParams, Params
from pipeline.tasks.base import Outcomes, Scoring
from pipeline.tasks.scoring import SCORINGS
from pipeline.training.modeling import resolve_model


@dataclass
class Assessment:
    """Everything evaluate found, as it is written (reports/eval) and logged (the MLflow run)."""

    metrics: dict  # test metrics, intervals, the baseline comparison, calibration, slices, prompting baselines
    baseline: dict  # the classical baseline's test metrics and intervals
    confusion: pd.DataFrame  # (actual, predicted) pairs, DVC's confusion plot
    curves: dict[str, dict]  # ROC, precision-recall and reliability tables, DVC plots
    errors: pd.DataFrame  # the errors worth reading
    runtimes: dict  # PyTorch and the ONNX runtimes side by side, and the one that serves
    outcomes: Outcomes  # PyTorch's outcomes on each test example (promotion's paired test reads them)


def score(predictor: Predictor, table: pd.DataFrame, source: str = "test split") -> tuple[dict, pd.DataFrame]:
    """The task's test metrics of `predictor` on a split table, and the (actual, predicted) pairs of the
    confusion matrix: what promotion's re-scoring and the benchmarks measure a model by."""
    scoring = SCORINGS.for_task(predictor.card.task)
    result = predictor.task.outcomes(predictor, table, source)
    return scoring.test_metrics(result.true, result.pred, predictor.labels), scoring.confusion_pairs(
        result.true, result.pred
    )


def assess(params: Params, card: ModelCard, test_file: Path) -> Assessment:
    """The model in `card`'s folder on the test split, beside its baselines: every number evaluate
    writes and logs. Stops, registering nothing, where a metric is not finite or (with
    `evaluate.require_beats_baseline`) where the model does not beat the classical baseline."""
    task = SCORINGS.for_task(card.task)
    test = data.read_table(test_file)
    # One timed pass over the test split per runtime; PyTorch's outcomes are the model's test results.
    runtimes, result = compare_runtimes(task, test, str(test_file), params.export)
    true, pred = result.true, result.pred
    metrics = {**task.test_metrics(true, pred, card.labels), **result.measured}
    nonfinite = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if nonfinite:
        raise PipelineError(f"evaluate: test {', '.join(nonfinite)} not finite; the model is not registered")
    train = data.read_table(paths.SPLIT / "train.parquet")
    base_true, base_pred = task.baseline_outcomes(train, test, card.labels, params.evaluate.baseline)
    baseline = task.test_metrics(base_true, base_pred, card.labels)

    # Intervals and the comparison with the baseline resample the same test examples (seeded).
    def scores(t: list, p: list) -> dict[str, float]:
        return task.summary_scores(t, p, card.labels)

    rounds, seed = params.evaluate.bootstrap_rounds, params.seed
    metrics["ci95"] = bootstrap_intervals(scores, true, pred, task.summary_metrics, rounds, seed)
    baseline["ci95"] = bootstrap_intervals(scores, base_true, base_pred, task.summary_metrics, rounds, seed)
    versus = paired_bootstrap(scores, true, pred, base_pred, task.headline_metric, rounds, seed)
    pairs = task.confusion_pairs(true, pred)
    metrics["vs_baseline"] = {
        "metric": versus.metric,
        "difference": versus.difference,
        "ci95": list(versus.interval),
        "p_value": versus.p_value,
        "beats_baseline": versus.difference > 0 and versus.significant(params.evaluate.alpha),
        "verdict": beats_baseline_line(task.baseline_name, versus, params.evaluate.alpha),
    }
    metrics["flags"] = under_predicted(pairs, list(metrics.get("per_class", {})))
    curve_tables = calibration_and_curves(task, result, card, metrics)
    texts = data.raw_texts(test)
    calibrated = task.probabilities(result.logits / card.temperature) if result.logits is not None else None
    errors = task.error_examples(texts, result, calibrated, card.labels, k=5)
    metrics["slices"] = sliced_scores(task, length_groups(texts), result, card.labels)
    if data.SLICE in test.columns:
        metrics["slices_by_column"] = {
            "column": params.ingest.slice_column,
            "slices": sliced_scores(task, value_groups(test[data.SLICE]), result, card.labels),
        }
    verdict = metrics["vs_baseline"]["verdict"]
    if params.evaluate.require_beats_baseline and not (
        metrics["vs_baseline"]["beats_baseline"] and not any("never predicted" in flag for flag in metrics["flags"])
    ):
        raise PipelineError(
            f"evaluate: not registered (evaluate.require_beats_baseline): {verdict}"
            + "".join(f"; {flag}" for flag in metrics["flags"])
        )

    # Decoders: the untuned base model prompted zero- and few-shot, the baselines fine-tuning must beat.
    prompting = task.prompting_baselines(
        lambda: resolve_model(params.model), card, train, test, params.evaluate.prompting
    )
    if prompting:
        metrics["prompting"] = prompting
    return Assessment(metrics, baseline, pairs, curve_tables, errors, runtimes, result)


def compare_runtimes(task: Scoring, test: pd.DataFrame, source: str, export: ExportParams) -> tuple[dict, Outcomes]:
    """Each runtime on the test split, measured side by side in this run: its headline metric and change
    from PyTorch, samples/s at batch 32, single-text p50/p95 latency, weights on disk; and the runtime that
    serves (`export.serve`; auto: int8 unless it costs more than `export.max_int8_drop`, then fp32 ONNX).
    Returns them with PyTorch's outcomes."""
    # The model's own folder first: a model that cannot be used (non-finite weights) is refused as such,
    # before the export it came with is looked at.
    eager = Predictor(paths.MODEL, batch_size=32)
    exported = read_export_card(paths.ONNX)
    if exported["model_sha256"] != tree_sha256(paths.MODEL):
        raise PipelineError(f"{paths.ONNX}: exported from another model than {paths.MODEL} (run: dvc repro export)")
    headline, rows, outcomes = task.headline_metric, {}, {}
    # Ratios of runtimes are timed by the fastest of three passes; a model served by PyTorch alone (a
    # generative one: every pass generates) is timed once.
    passes = 3 if exported["runtimes"] else 1
    for runtime in (TORCH, *exported["runtimes"]):
        predictor = eager if runtime == TORCH else Predictor(paths.MODEL, 32, runtime, paths.ONNX)
        result, timing = timed_outcomes(predictor, test, source, passes=passes)
        if result.logits is not None and not np.isfinite(result.logits).all():
            raise PipelineError(f"evaluate: the {runtime} runtime gives non-finite logits; nothing is registered")
        value = task.summary_scores(result.true, result.pred, predictor.labels)[headline]
        weights = (
            sum(f.stat().st_size for f in paths.MODEL.rglob("*.safetensors"))
            if runtime == TORCH
            else (paths.ONNX / ONNX_FILES[runtime]).stat().st_size
        )
        outcomes[runtime] = result
        rows[runtime] = {headline: value, "difference": value - rows.get(TORCH, {headline: value})[headline], **timing}
        rows[runtime]["megabytes"] = round(weights / 1e6, 1)
    for row in rows.values():
        row["speedup"] = round(row["samples_per_second"] / rows[TORCH]["samples_per_second"], 2)
    if export.serve == "auto":
        served = TORCH if not exported["runtimes"] else "onnx"
        if "onnx-int8" in rows and -rows["onnx-int8"]["difference"] <= export.max_int8_drop:
            served = "onnx-int8"
    elif export.serve in rows:
        served = export.serve
    else:
        raise PipelineError(f"export.serve: {export.serve} was not exported ({exported.get('skipped', '')})")
    return {"metric": headline, "served": served, "runtimes": rows, "machine": machine()}, outcomes[TORCH]


def calibration_and_curves(task: Scoring, result: Outcomes, card: ModelCard, metrics: dict) -> dict[str, dict]:
    """ROC and precision-recall curves with their areas, and the expected calibration error before and
    after the card's temperature, added to `metrics`; returns the curve tables (DVC plots). Tasks whose
    outcomes carry no example logits (NER) get empty tables."""
    tables: dict[str, dict] = {"roc": {}, "pr": {}, "calibration": {}}
    if result.logits is None:
        return tables
    targets = np.asarray(result.targets)
    indicator = targets if targets.ndim == 2 else np.eye(len(card.labels))[targets]
    raw = task.probabilities(result.logits)
    calibrated = task.probabilities(result.logits / card.temperature)
    ece_raw, _ = reliability(*task.reliability_points(raw, targets))
    ece, diagram = reliability(*task.reliability_points(calibrated, targets))
    tables["roc"], tables["pr"], areas = curves(indicator, calibrated, card.labels)
    tables["calibration"] = {"reliability": diagram}
    metrics.update(areas)
    metrics["calibration"] = {"ece": ece, "ece_uncalibrated": ece_raw, "temperature": card.temperature}
    return tables


def length_groups(texts: list[str]) -> dict[str, np.ndarray]:
    """The test examples by text length (words), in quartiles of the test split."""
    words = np.array([len(t.split()) for t in texts])
    edges = np.unique(np.quantile(words, [0, 0.25, 0.5, 0.75, 1]).round())
    groups = {}
    for low, high in zip(edges[:-1], edges[1:]):
        index = np.flatnonzero((words >= low) & ((words < high) | (high == edges[-1])))
        if len(index):
            last = int(high) if high == edges[-1] else int(high) - 1  # buckets hold low <= words < high
            groups[f"{int(low)}-{last} words" if last > low else f"{int(low)} words"] = index
    return groups


def value_groups(values: pd.Series, most: int = 20) -> dict[str, np.ndarray]:
    """The test examples by the value of `ingest.slice_column`, the `most` most frequent values."""
    codes = values.astype(str).to_numpy()
    return {value: np.flatnonzero(codes == value) for value in values.astype(str).value_counts().index[:most]}


def sliced_scores(task: Scoring, groups: dict[str, np.ndarray], result: Outcomes, labels: list[str]) -> dict[str, dict]:
    """The summary metrics of each group of test examples: where the model is weak."""
    return {
        name: {
            "examples": int(len(index)),
            **task.summary_scores([result.true[i] for i in index], [result.pred[i] for i in index], labels),
        }
        for name, index in groups.items()
    }


def beats_baseline_line(baseline_name: str, versus: PairedComparison, alpha: float) -> str:
    """One sentence: does the fine-tuned model beat the classical baseline, significantly?"""
    if versus.difference > 0 and versus.significant(alpha):
        verdict = "beats"
    elif versus.difference > 0:
        verdict = "is not significantly better than"
    else:
        verdict = "does not beat"
    return f"the fine-tuned model {verdict} the {baseline_name} baseline: {versus.describe()}"
