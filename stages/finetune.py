"""Stage 4: fine-tune the pretrained model on the tokenized train split.

Evaluates on the validation split every epoch, stops early when the validation metric stops improving,
and keeps the best epoch's weights. Writes the model folder (safetensors, tokenizer, label map,
training.json), per-step train loss and per-epoch validation metrics as DVC plots (dvclive), and logs the
run to MLflow with its params, per-step metrics, git commit and the hash of the data it trained on.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np

import mlflow
from dvclive import Live
from transformers import EarlyStoppingCallback, set_seed
from transformers.integrations import MLflowCallback

from stages import data, paths, tracking
from stages.errors import atomic_dir, stage_main
from stages.modeling import load_for_training, load_tokenizer, resolve_model
from stages.params import FinetuneParams, flat_params, load_params
from stages.tasks import MultiLabelClassification, get_task
from stages.training import DvcLiveMetrics, build_trainer, training_arguments

# The sections whose values shape the trained model; they are the run's MLflow params.
TRAINING_SECTIONS = ("seed", "task", "ingest", "split", "model", "tokenize", "finetune")


@stage_main
def main() -> None:
    params = load_params()
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    data_files = [paths.SPLIT / name for name in ("train.parquet", "validation.parquet", "labels.json")]
    data_sha256 = tracking.hash_files(data_files)
    datasets = data.load_tokenized(paths.TOKENIZED)
    model_dir = resolve_model(params.model)
    tokenizer = load_tokenizer(model_dir)
    set_seed(params.seed)  # before the head is initialised, so the same seed gives the same model
    model = load_for_training(model_dir, params.task, labels)

    tracking.configure(params.mlflow.experiment_name)
    shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)
    with atomic_dir(paths.MODEL) as model_out, atomic_dir(paths.TRAIN_LOGS) as logs_out:
        with mlflow.start_run() as run:
            training_params = flat_params(params, TRAINING_SECTIONS)
            git = tracking.git_state()
            mlflow.log_params(training_params)
            mlflow.set_tags({**git, "data_sha256": data_sha256, "task": params.task, "method": params.finetune.method,
                             "stage": "finetune"})
            live = Live(dir=str(logs_out), dvcyaml=False, save_dvc_exp=False, report=None)
            args = training_arguments(params.finetune, params.seed, paths.CHECKPOINTS)
            callbacks = [
                EarlyStoppingCallback(params.finetune.early_stopping_patience, params.finetune.early_stopping_threshold),
                DvcLiveMetrics(live),
                MLflowCallback(),  # per-step metrics into the active run
            ]
            trainer = build_trainer(model, tokenizer, params.task, labels, args, datasets["train"], datasets["validation"],
                                    callbacks, threshold=params.finetune.threshold)
            started = time.perf_counter()
            result = trainer.train()
            train_seconds = time.perf_counter() - started
            live.end()

            trainer.save_model(str(model_out))  # the best epoch's weights (load_best_model_at_end)
            thresholds = decision_thresholds(trainer, datasets["validation"], params.task, params.finetune, len(labels))
            best_metric = trainer.state.best_metric
            summary = {
                "mlflow_run_id": run.info.run_id,
                **git,
                "data_sha256": data_sha256,
                "params_sha256": tracking.hash_json(training_params),
                "base_model": params.model.source,
                "labels": labels,
                "task": params.task,
                "method": params.finetune.method,
                "train_examples": len(datasets["train"]),
                "max_length": params.tokenize.max_length,
                "truncation": params.tokenize.truncation,
                "stride": params.tokenize.stride,
                "pooling": params.tokenize.pooling,
                "thresholds": thresholds,
                "global_step": trainer.state.global_step,
                "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
                f"best_validation_{params.finetune.metric_for_best_model}": best_metric,
                "train_seconds": round(train_seconds, 1),
                "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            }
            data.write_json(summary, model_out / "training.json")
            mlflow.log_metrics({"train_seconds": train_seconds, f"best_validation_{params.finetune.metric_for_best_model}": best_metric})
    shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)
    print(f"finetune: {summary['global_step']} steps in {train_seconds:.0f}s, best validation "
          f"{params.finetune.metric_for_best_model} {best_metric:.4f} (run {run.info.run_id})")


def decision_thresholds(trainer: Any, validation: Any, task_name: str, params: FinetuneParams, n_labels: int) -> list[float] | None:
    """Multi-label only: the probability each label needs to be predicted — `finetune.threshold` for all,
    or with `finetune.tune_thresholds` the best per label on the validation split (with the best weights)."""
    task = get_task(task_name)
    if not isinstance(task, MultiLabelClassification):
        return None
    if not params.tune_thresholds:
        return [params.threshold] * n_labels
    output = trainer.predict(validation)
    return task.tune_thresholds(np.asarray(output.predictions), np.asarray(output.label_ids))


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


if __name__ == "__main__":
    main()
