"""Registering an evaluated model in MLflow: the pyfunc model with its weights, ONNX graphs and checksums,
its provenance tags and description, and the alias `evaluate.alias`; the metrics logged to the run that
trained it. Called by the evaluate stage once `pipeline.evaluation.assessment.assess` has measured the model."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd

from pipeline import data, paths, pyfunc_model, tracking
from pipeline.card import ModelCard
from pipeline.evaluation.statistics import OUTCOMES_ARTIFACT
from pipeline.methods.base import ADAPTER_CONFIG
from pipeline.prediction.runtimes import ONNX_FILES
from pipeline.registry import artifacts, exclusive
from pipeline.schema import EvaluateParams
from pipeline.tasks.base import TaskSpec
from pipeline.tasks.generation.generating import GREEDY
from pipeline.tasks.registry import TASKS

if TYPE_CHECKING:
    from pipeline.evaluation.assessment import Assessment


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


def input_example(rows: pd.DataFrame, task: TaskSpec) -> Any:
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
    headline = TASKS.for_task(card.task).headline_metric
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


def training_run(card: ModelCard) -> mlflow.ActiveRun:
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


def log_assessment(found: Assessment, card: ModelCard, test_file: Path) -> None:
    """The assessment's numbers as metrics of the active run, its tables as artifacts; and the test set
    with each example's outcome, so promotion can compare another model with this one example by example
    (paired), re-scoring it on exactly this test set."""
    metrics, baseline, runtimes = found.metrics, found.baseline, found.runtimes
    mlflow.log_metrics(
        {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
        | {f"test_{k}_ci95_low": v[0] for k, v in metrics["ci95"].items()}
        | {f"test_{k}_ci95_high": v[1] for k, v in metrics["ci95"].items()}
        | {f"baseline_{k}": v for k, v in baseline.items() if isinstance(v, float)}
        | {
            f"prompting_{name.replace('-', '_').replace(' ', '_')}_{k}": v
            for name, row in metrics.get("prompting", {}).items()
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
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
    mlflow.log_artifact(str(test_file), "evaluation")
    outcomes = {"labels": card.labels, "true": found.outcomes.true, "pred": found.outcomes.pred}
    mlflow.log_dict(outcomes, OUTCOMES_ARTIFACT)
