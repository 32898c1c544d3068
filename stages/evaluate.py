"""Stage 5: score the fine-tuned model on the test split and register it in MLflow.

Writes test metrics (DVC metrics) and the (actual, predicted) pairs for DVC's confusion plot, logs both to
the finetune stage's MLflow run, registers the model as a new version of `evaluate.registered_model_name`
and points the alias `evaluate.alias` (default `challenger`) at it. Promotion to `champion` is a separate
command, because it changes shared state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import artifacts, data, paths, pyfunc_model, tracking
from pipeline.card import ModelCard
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.evaluation import (
    OUTCOMES_ARTIFACT,
    PairedComparison,
    bootstrap_intervals,
    curves,
    paired_bootstrap,
    reliability,
    under_predicted,
)
from pipeline.generating import GREEDY
from pipeline.inference import Predictor
from pipeline.methods.base import ADAPTER_CONFIG
from pipeline.modeling import resolve_model
from pipeline.params import load_params
from pipeline.registry import exclusive
from pipeline.runtimes import ONNX_FILES, TORCH, machine, read_export_card, timed_outcomes
from pipeline.schema import EvaluateParams, ExportParams
from pipeline.sources import tree_sha256
from pipeline.tables import write_csv
from pipeline.tasks.base import Outcomes, Scoring
from pipeline.tasks.scoring import SCORINGS


def _pip_requirements(model_dir: Path, runtime: str) -> list[str]:
    """The packages the served model imports, pinned to the versions it was evaluated with."""
    from importlib.metadata import version

    # torch's local build tag (+cpu, +cu124) is dropped: the serving machine picks its own build.
    names = ["mlflow", "torch", "transformers", "scikit-learn", "seqeval", "pandas"]
    if (model_dir / ADAPTER_CONFIG).is_file():
        names.append("peft")  # an adapter folder loads through peft
    if runtime in ONNX_FILES:
        names.append("onnxruntime")
    pins = {name: version(name).split("+")[0] for name in names}
    return [f"{name}=={pin}" for name, pin in pins.items()]


def input_example(rows: pd.DataFrame, task: Scoring) -> Any:
    """A few test inputs as the served model takes them: texts, or [text, pair] lists; with the sampling
    params and their defaults for a model that generates text (MLflow reads the params schema off it)."""
    pairs = data.text_pairs(rows)
    inputs = [[a, b] for a, b in zip(rows[data.TEXT], pairs)] if pairs else data.raw_texts(rows)
    return (inputs, dataclasses.asdict(GREEDY)) if task.generates_text else inputs


def _log_model(
    params: EvaluateParams, card: ModelCard, artifacts_to_log: dict[str, Path], example: Any, runtime: str
) -> Any:
    """mlflow.pyfunc.log_model of the served model with `artifacts_to_log`, registered as a new version."""
    return mlflow.pyfunc.log_model(
        name="model",
        # A pair model's served signature takes [text, pair] lists: its own entry point.
        python_model=str(
            Path(pyfunc_model.__file__).with_name("pyfunc_pair_model.py")
            if card.encoding.text_pair
            else Path(pyfunc_model.__file__)
        ),
        artifacts={key: str(path) for key, path in artifacts_to_log.items()},
        model_config={"runtime": runtime},
        code_paths=[str(Path(pyfunc_model.__file__).parent)],  # the `pipeline` package: loading needs no repository
        input_example=example,
        pip_requirements=_pip_requirements(artifacts_to_log["model_dir"], runtime),
        registered_model_name=params.registered_model_name,
    )


def register(
    model_dir: Path, params: EvaluateParams, card: ModelCard, metrics: dict, example: Any, runtime: str
) -> dict:
    """Log the pyfunc model to the active run, register it as a new version with its provenance, and
    point the alias at it. The version carries the ONNX export too and serves with `runtime`."""
    run = mlflow.active_run()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    # The weights always travel (PyTorch is every runtime's reference); the ONNX graphs when they serve.
    folders = {"model_dir": model_dir} | ({"onnx_dir": paths.ONNX} if runtime in ONNX_FILES else {})
    with tempfile.TemporaryDirectory() as scratch:
        checksums = artifacts.write_checksums(folders, Path(scratch) / artifacts.CHECKSUMS_FILE)
        info = _log_model(params, card, folders | {artifacts.CHECKSUMS: checksums}, example, runtime)
    version = str(info.registered_model_version)
    test_data_sha256 = tracking.hash_files([paths.SPLIT / "test.parquet"])
    provenance = card.provenance
    tags = {
        **(provenance.model_dump(exclude={"mlflow_run_id"}) if provenance else {}),
        "test_data_sha256": test_data_sha256,
        **tracking.dvc_lock_hashes("finetune"),
        "task": card.task,
        "method": card.method,
        "base_model": str(card.base_model),
        "labels": json.dumps(card.labels),
        "mlflow_run_id": run.info.run_id,
        "runtime": runtime,
        **{f"test_{k}": f"{v:.6f}" for k, v in scalars.items()},
    }
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(params.registered_model_name, version, key, value)
    headline = SCORINGS.for_task(card.task).headline_metric
    origin = (
        f" (git {provenance.git_commit[:10]}{', dirty' if provenance.git_dirty == 'true' else ''})"
        if provenance
        else ""
    )
    description = (
        f"{card.task.replace('_', ' ')} model, {card.method} fine-tuning of {card.base_model} "
        f"on {card.train_examples} examples{origin}, test {headline} {metrics[headline]:.4f}."
    )
    client.update_model_version(params.registered_model_name, version, description=description)
    # Queued experiments register at the same time, and MLflow's alias upsert is no atomic write: two inserts
    # of the alias row meet a unique-key error on PostgreSQL. The promotion lock serialises them.
    with exclusive(params.registered_model_name):
        client.set_registered_model_alias(params.registered_model_name, params.alias, version)
    return {
        "name": params.registered_model_name,
        "version": version,
        "alias": params.alias,
        "model_uri": f"models:/{params.registered_model_name}@{params.alias}",
        "run_id": run.info.run_id,
        "test_data_sha256": test_data_sha256,
    }


def _training_run(card: ModelCard) -> mlflow.ActiveRun:
    """Continue the finetune run; if the tracking store no longer has it (a new mlflow.db, another
    server) or the model was trained elsewhere, open a new run that records the training provenance."""
    provenance = card.provenance
    try:
        if provenance is None:
            raise mlflow.exceptions.MlflowException("the model card names no MLflow run")
        mlflow.MlflowClient().get_run(provenance.mlflow_run_id)
    except mlflow.exceptions.MlflowException:
        print(
            f"evaluate: MLflow run {provenance.mlflow_run_id if provenance else '(none)'} not found in "
            f"{tracking.tracking_uri()}; starting a new run"
        )
        run = mlflow.start_run(run_name="evaluate")
        mlflow.set_tags(
            {
                **(provenance.model_dump(exclude={"mlflow_run_id", "params_sha256"}) if provenance else {}),
                "task": card.task,
                "finetune_run_id": provenance.mlflow_run_id if provenance else "",
            }
        )
        return run
    return mlflow.start_run(run_id=provenance.mlflow_run_id)


@stage_main
def main() -> None:
    params = load_params()
    card = ModelCard.read(paths.MODEL)
    task = SCORINGS.for_task(card.task)
    test_file = paths.SPLIT / "test.parquet"
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
    headline = task.headline_metric

    tracking.configure(params.mlflow.experiment_name)
    with atomic_dir(paths.EVAL) as out:
        data.write_json({k: v for k, v in metrics.items() if k != "confusion_matrix"}, out / "metrics.json")
        data.write_json({k: v for k, v in baseline.items() if k != "confusion_matrix"}, out / "baseline.json")
        write_csv(pairs, out / "confusion.csv")
        write_curves(curve_tables, out / "plots")
        write_csv(errors, out / "errors.csv")
        data.write_json(runtimes, out / "runtimes.json")
        with _training_run(card):
            mlflow.log_metrics(
                {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
                | {f"test_{k}_ci95_low": v[0] for k, v in metrics["ci95"].items()}
                | {f"test_{k}_ci95_high": v[1] for k, v in metrics["ci95"].items()}
                | {f"baseline_{k}": v for k, v in baseline.items() if isinstance(v, float)}
                | {
                    f"prompting_{name.replace('-', '_')}_{k}": v
                    for name, row in prompting.items()
                    for k, v in row.items()
                    if isinstance(v, (int, float))
                }
            )
            mlflow.log_dict(metrics, "evaluation/test_metrics.json")
            mlflow.log_dict(runtimes, "evaluation/runtimes.json")
            mlflow.log_metrics(
                {
                    f"runtime_{name.replace('-', '_')}_{key}": value
                    for name, row in runtimes["runtimes"].items()
                    for key, value in row.items()
                }
            )
            # The test set and each example's outcome travel with the run, so promotion can compare another
            # model with this one example by example (paired), re-scoring it on exactly this test set.
            mlflow.log_artifact(str(test_file), "evaluation")
            mlflow.log_dict({"labels": card.labels, "true": true, "pred": pred}, OUTCOMES_ARTIFACT)
            registry = register(
                paths.MODEL, params.evaluate, card, metrics, input_example(test.head(3), task), runtimes["served"]
            )
        data.write_json(registry, out / "registry.json")
    low, high = metrics["ci95"][headline]
    served = runtimes["runtimes"][runtimes["served"]]
    print(
        f"evaluate: test {headline} {metrics[headline]:.4f} (95% CI {low:.4f}-{high:.4f}); {verdict}; "
        f"registered {registry['name']} version {registry['version']} as @{registry['alias']}, served by "
        f"{runtimes['served']} ({headline} {served[headline]:.4f}, {served['samples_per_second']:.0f} samples/s, "
        f"{served['speedup']:.1f}x PyTorch)"
    )
    for flag in metrics["flags"]:
        print(f"evaluate: warning: {flag}")


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


def write_curves(tables: dict[str, dict], folder: Path) -> None:
    """One CSV per curve under plots/{roc,pr,calibration}/, so `dvc plots` draws each folder as one plot."""
    for kind, curves_of_kind in tables.items():
        (folder / kind).mkdir(parents=True)
        for name, table in curves_of_kind.items():
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            write_csv(table, folder / kind / f"{safe}.csv")


def beats_baseline_line(baseline_name: str, versus: PairedComparison, alpha: float) -> str:
    """One sentence: does the fine-tuned model beat the classical baseline, significantly?"""
    if versus.difference > 0 and versus.significant(alpha):
        verdict = "beats"
    elif versus.difference > 0:
        verdict = "is not significantly better than"
    else:
        verdict = "does not beat"
    return f"the fine-tuned model {verdict} the {baseline_name} baseline: {versus.describe()}"


if __name__ == "__main__":
    main()
