"""Stage 5: score the fine-tuned model on the test split and register it in MLflow.

Writes test metrics (DVC metrics) and the (actual, predicted) pairs for DVC's confusion plot, logs both to
the finetune stage's MLflow run, registers the model as a new version of `evaluate.registered_model_name`
and points the alias `evaluate.alias` (default `challenger`) at it. Promotion to `champion` is a separate
command, because it changes shared state.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd

from pipeline import data, methods, paths, pyfunc_model, tracking
from pipeline.card import ModelCard
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.inference import Predictor, score
from pipeline.params import EvaluateParams, load_params
from pipeline.tasks import get_task


def _pip_requirements(model_dir: Path) -> list[str]:
    """The packages the served model imports, pinned to the versions it was evaluated with."""
    from importlib.metadata import version

    # torch's local build tag (+cpu, +cu124) is dropped: the serving machine picks its own build.
    names = ["mlflow", "torch", "transformers", "scikit-learn", "seqeval", "pandas"]
    if (model_dir / methods.ADAPTER_CONFIG).is_file():
        names.append("peft")  # an adapter folder loads through peft
    pins = {name: version(name).split("+")[0] for name in names}
    return [f"{name}=={pin}" for name, pin in pins.items()]


def input_example(rows: pd.DataFrame) -> list:
    """A few test inputs as the served model takes them: texts, or [text, pair] lists."""
    pairs = data.text_pairs(rows)
    return [[a, b] for a, b in zip(rows[data.TEXT], pairs)] if pairs else data.raw_texts(rows)


def register(model_dir: Path, params: EvaluateParams, card: ModelCard, metrics: dict, example: list) -> dict:
    """Log the pyfunc model to the active run, register it as a new version with its provenance, and
    point the alias at it."""
    run = mlflow.active_run()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    info = mlflow.pyfunc.log_model(
        name="model",
        # A pair model's served signature takes [text, pair] lists: its own entry point.
        python_model=str(
            Path(pyfunc_model.__file__).with_name("pyfunc_pair_model.py")
            if card.encoding.text_pair
            else Path(pyfunc_model.__file__)
        ),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(pyfunc_model.__file__).parent)],  # the `pipeline` package: loading needs no repository
        input_example=example,
        pip_requirements=_pip_requirements(model_dir),
        registered_model_name=params.registered_model_name,
    )
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
        **{f"test_{k}": f"{v:.6f}" for k, v in scalars.items()},
    }
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(params.registered_model_name, version, key, value)
    headline = get_task(card.task).headline_metric
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
    test_file = paths.SPLIT / "test.parquet"
    test = data.read_table(test_file)
    metrics, pairs = score(Predictor(paths.MODEL), test, source=str(test_file))
    nonfinite = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if nonfinite:
        raise PipelineError(f"evaluate: test {', '.join(nonfinite)} not finite; the model is not registered")

    tracking.configure(params.mlflow.experiment_name)
    with atomic_dir(paths.EVAL) as out:
        summary = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
        data.write_json(summary, out / "metrics.json")
        pairs.to_csv(out / "confusion.csv", index=False)
        with _training_run(card):
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            mlflow.log_dict(metrics, "evaluation/test_metrics.json")
            # The test set travels with the run, so promotion can re-score another model on exactly it.
            mlflow.log_artifact(str(test_file), "evaluation")
            registry = register(paths.MODEL, params.evaluate, card, metrics, input_example(test.head(3)))
        data.write_json(registry, out / "registry.json")
    headline = get_task(card.task).headline_metric
    print(
        f"evaluate: test {headline} {metrics[headline]:.4f}, macro-F1 {metrics['macro_f1']:.4f}; "
        f"registered {registry['name']} version {registry['version']} as @{registry['alias']}"
    )


if __name__ == "__main__":
    main()
