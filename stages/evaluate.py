"""Stage 5: score the fine-tuned model on the test split and register it in MLflow.

Writes test metrics (DVC metrics) and the (actual, predicted) pairs for DVC's confusion plot, logs both to
the finetune stage's MLflow run, registers the model as a new version of `evaluate.registered_model_name`
and points the alias `evaluate.alias` (default `challenger`) at it. Promotion to `champion` is a separate
command, because it changes shared state.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from stages import data, paths, pyfunc_model, tracking
from stages.errors import atomic_dir, stage_main
from stages.inference import Predictor
from stages.params import EvaluateParams, load_params


def _pip_requirements() -> list[str]:
    import sklearn
    import torch
    import transformers

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
    ]


def register(model_dir: Path, params: EvaluateParams, metrics: dict, example: list[str]) -> dict:
    """Log the pyfunc model to the active run, register a version and set the alias on it."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(pyfunc_model.__file__)),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).parent)],  # the `stages` package, so loading needs no repository
        input_example=example,
        pip_requirements=_pip_requirements(),
        registered_model_name=params.registered_model_name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(params.registered_model_name, params.alias, version)
    for key in ("accuracy", "macro_f1"):
        client.set_model_version_tag(params.registered_model_name, version, f"test_{key}", f"{metrics[key]:.6f}")
    run = mlflow.active_run()
    client.set_model_version_tag(params.registered_model_name, version, "mlflow_run_id", run.info.run_id)
    return {"name": params.registered_model_name, "version": version, "alias": params.alias,
            "model_uri": f"models:/{params.registered_model_name}@{params.alias}", "run_id": run.info.run_id}


def _training_run(training: dict) -> mlflow.ActiveRun:
    """Continue the finetune run; if the tracking store no longer has it (a new mlflow.db, another
    server), open a new run that records the training provenance instead of failing."""
    try:
        mlflow.MlflowClient().get_run(training["mlflow_run_id"])
    except mlflow.exceptions.MlflowException:
        print(f"evaluate: MLflow run {training['mlflow_run_id']} not found in {tracking.tracking_uri()}; starting a new run")
        run = mlflow.start_run(run_name="evaluate")
        mlflow.set_tags({**tracking.git_state(), "data_sha256": training["data_sha256"], "task": training["task"],
                         "finetune_run_id": training["mlflow_run_id"]})
        return run
    return mlflow.start_run(run_id=training["mlflow_run_id"])


@stage_main
def main() -> None:
    params = load_params()
    training = data.read_json(paths.MODEL / "training.json")
    labels: list[str] = training["labels"]
    test = data.read_table(paths.SPLIT / "test.parquet")
    predictor = Predictor(paths.MODEL)
    logits = predictor.logits(test[data.TEXT].tolist())
    pred_ids, _ = predictor.task.decode(logits)
    true_ids = test[data.LABEL].astype(str).map({label: i for i, label in enumerate(labels)}).to_numpy()
    metrics = predictor.task.test_metrics(true_ids, pred_ids, labels)
    confusion = pd.DataFrame({"actual": [labels[i] for i in true_ids], "predicted": [labels[i] for i in pred_ids]})

    tracking.configure(params.mlflow.experiment_name)
    with atomic_dir(paths.EVAL) as out:
        summary = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
        data.write_json(summary, out / "metrics.json")
        confusion.to_csv(out / "confusion.csv", index=False)
        with _training_run(training):
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            mlflow.log_dict(metrics, "evaluation/test_metrics.json")
            registry = register(paths.MODEL, params.evaluate, metrics, test[data.TEXT].head(3).tolist())
        data.write_json(registry, out / "registry.json")
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; "
          f"registered {registry['name']} version {registry['version']} as @{registry['alias']}")


if __name__ == "__main__":
    main()
