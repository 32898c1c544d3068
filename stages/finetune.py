"""Stage 4: fine-tune the pretrained model on the tokenized train split.

`finetune.method` decides what trains (stages/methods.py). Evaluates on the validation split every
epoch (or every `eval_steps`), stops early when the validation metric stops improving, and keeps the best
weights. Writes the model folder (weights or adapter, tokenizer, label map, training.json), per-step train
loss and per-evaluation validation metrics as DVC plots, and logs the run to MLflow with its params,
per-step metrics, git commit, data hash and cost (trainable parameters, time, peak memory, artifact size).

Checkpoints live in `checkpoints/`, outside the stage's outputs, with `run.json` naming the params/data
fingerprint and the MLflow run. A finetune killed at any moment continues from its newest complete
checkpoint in the same MLflow run on the next `dvc repro`; checkpoints of other params, data or model, or
unreadable ones, are refused (or discarded with `finetune.on_bad_checkpoint: restart`).
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mlflow
from transformers import EarlyStoppingCallback, set_seed
from transformers.integrations import MLflowCallback

from stages import data, methods, paths, tracking
from stages.errors import PipelineError, atomic_dir, stage_main
from stages.modeling import load_for_training, load_tokenizer, resolve_model
from stages.params import FinetuneParams, Params, flat_params, load_params
from stages.tasks import MultiLabelClassification, get_task
from stages.training import build_trainer, training_arguments, write_plots

# The sections whose values shape the trained model; they are the run's MLflow params.
TRAINING_SECTIONS = ("seed", "task", "ingest", "split", "model", "tokenize", "finetune")
# Params that change how a run is resumed, not what it trains: left out of the checkpoint fingerprint.
RESUME_KEYS = ("finetune.resume", "finetune.on_bad_checkpoint")
RUN_FILE = "run.json"
INFO_FILE = "training.json"  # in the model folder


@dataclass
class FitResult:
    """What one training run cost and reached; the model is saved in the output folder."""

    global_step: int
    best_checkpoint_step: int | None
    best_metric: float
    train_seconds: float
    train_samples_per_second: float | None
    trainable_params: int
    total_params: int
    peak_rss_mib: float  # the process's peak resident memory so far (training dominates it)
    peak_gpu_mib: float | None  # the most GPU memory torch held at once; None without a GPU
    artifact_bytes: int  # the saved model folder
    trained_bytes: int  # what this run adds to the pretrained model: the folder less the base copy
    thresholds: list[float] | None


@dataclass
class Prepared:
    """A model ready to train: everything that can fail on a bad param is done before training starts."""

    trainer: Any
    tokenizer: Any
    pretrained_dir: Path
    labels: list[str]
    trainable_params: int
    total_params: int


def prepare(params: Params, datasets: Any, labels: list[str], checkpoints: Path) -> Prepared:
    """The pretrained model with its new head, prepared for `finetune.method`, inside its Trainer."""
    finetune = params.finetune
    model_dir = resolve_model(params.model)
    tokenizer = load_tokenizer(model_dir)
    set_seed(params.seed)  # before the head is initialised, so the same seed gives the same model
    model = load_for_training(model_dir, params.task, labels, finetune.dropout, params.model.random_init)
    args = training_arguments(finetune, params.seed, checkpoints)
    model = methods.prepare(model, finetune, params.task, _total_steps(args, len(datasets["train"])))
    trainable, total = methods.parameter_counts(model)
    stopping = [EarlyStoppingCallback(finetune.early_stopping_patience, finetune.early_stopping_threshold)] \
        if finetune.early_stopping_patience else []
    trainer = build_trainer(model, tokenizer, params.task, labels, args, datasets["train"], datasets["validation"],
                            stopping, params=finetune)
    return Prepared(trainer, tokenizer, model_dir, labels, trainable, total)


def fit(params: Params, prepared: Prepared, model_out: Path, resume_from: str | None = None,
        plots_out: Path | None = None, provenance: dict[str, Any] | None = None) -> FitResult:
    """Train and save the best model to `model_out` (and the learning curves to `plots_out`): the training
    the stage runs, shared with the method-comparison benchmark so both measure the same thing.
    `provenance` (run id, commit, hashes) heads the folder's training.json."""
    trainer = prepared.trainer
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started

    # The best evaluation's weights are loaded (load_best_model_at_end); thresholds are tuned on them.
    thresholds = decision_thresholds(trainer, trainer.eval_dataset, params.task, params.finetune, len(prepared.labels))
    methods.save(trainer.model, model_out, prepared.pretrained_dir, params.finetune.merge_adapter)
    prepared.tokenizer.save_pretrained(model_out)
    if plots_out is not None:
        write_plots(trainer.state.log_history, plots_out)
    fitted = FitResult(
        global_step=trainer.state.global_step,
        best_checkpoint_step=_step_of(trainer.state.best_model_checkpoint),
        best_metric=trainer.state.best_metric,
        train_seconds=round(train_seconds, 1),
        train_samples_per_second=result.metrics.get("train_samples_per_second"),
        trainable_params=prepared.trainable_params,
        total_params=prepared.total_params,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        artifact_bytes=methods.folder_bytes(model_out),
        trained_bytes=methods.folder_bytes(model_out, exclude=methods.BASE_DIR),
        thresholds=thresholds,
    )
    # What a Predictor needs to use the folder (labels, task, how texts were cut), and what it cost.
    data.write_json({
        **(provenance or {}),
        "labels": prepared.labels,
        "task": params.task,
        "method": params.finetune.method,
        "merged_adapter": params.finetune.merge_adapter,
        "base_model": params.model.source,
        "train_examples": len(trainer.train_dataset),
        "max_length": params.tokenize.max_length,
        "truncation": params.tokenize.truncation,
        "stride": params.tokenize.stride,
        "pooling": params.tokenize.pooling,
        "context": params.tokenize.context,
        "mark_case": params.tokenize.mark_case,
        "text_pair": params.ingest.text_pair,
        "resumed_from_step": _step_of(resume_from),
        f"best_validation_{params.finetune.metric_for_best_model}": fitted.best_metric,
        **{k: v for k, v in asdict(fitted).items() if k != "best_metric"},
    }, model_out / INFO_FILE)
    return fitted


@stage_main
def main() -> None:
    params = load_params()
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    data_files = [paths.SPLIT / name for name in ("train.parquet", "validation.parquet", "labels.json")]
    data_sha256 = tracking.hash_files(data_files)
    datasets = data.load_tokenized(paths.TOKENIZED)
    training_params = flat_params(params, TRAINING_SECTIONS)
    fingerprint = tracking.hash_json({"params": {k: v for k, v in training_params.items() if k not in RESUME_KEYS},
                                      "data": data_sha256, "model": _model_hash(params)})
    resume_from, run_id = checkpoint_to_resume(paths.CHECKPOINTS, fingerprint, params.finetune)
    prepared = prepare(params, datasets, labels, paths.CHECKPOINTS)

    tracking.configure(params.mlflow.experiment_name)
    with atomic_dir(paths.MODEL) as model_out, atomic_dir(paths.TRAIN_LOGS) as logs_out, _start_run(run_id) as run:
        git = tracking.git_state()
        if resume_from is None:
            mlflow.log_params(training_params)
        mlflow.set_tags({**git, "data_sha256": data_sha256, "task": params.task, "method": params.finetune.method,
                         "stage": "finetune"})
        paths.CHECKPOINTS.mkdir(exist_ok=True)
        data.write_json({"fingerprint": fingerprint, "mlflow_run_id": run.info.run_id}, paths.CHECKPOINTS / RUN_FILE)
        if resume_from:
            print(f"finetune: resuming from {resume_from} (MLflow run {run.info.run_id})", file=sys.stderr)
        prepared.trainer.add_callback(MLflowCallback())  # per-step metrics into the active run
        provenance = {"mlflow_run_id": run.info.run_id, **git, "data_sha256": data_sha256,
                      "params_sha256": tracking.hash_json(training_params)}
        fitted = fit(params, prepared, model_out, resume_from, plots_out=logs_out, provenance=provenance)
        metric_name = f"best_validation_{params.finetune.metric_for_best_model}"
        mlflow.log_metrics({metric_name: fitted.best_metric, "train_seconds": fitted.train_seconds,
                            "trainable_params": fitted.trainable_params, "total_params": fitted.total_params,
                            "peak_rss_mib": fitted.peak_rss_mib, "artifact_bytes": fitted.artifact_bytes,
                            "trained_bytes": fitted.trained_bytes})
    shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)
    print(f"finetune: {params.finetune.method}, {fitted.trainable_params:,} of {fitted.total_params:,} parameters trained, "
          f"{fitted.global_step} steps in {fitted.train_seconds:.0f}s, best validation "
          f"{params.finetune.metric_for_best_model} {fitted.best_metric:.4f} (run {run.info.run_id})")


def checkpoint_to_resume(folder: Path, fingerprint: str, params: FinetuneParams) -> tuple[str | None, str | None]:
    """(newest complete checkpoint, MLflow run id) of an interrupted run of the same params, data and
    model; (None, None) to train from the start. A folder from another run, or a checkpoint whose files
    do not read, stops the stage unless `finetune.on_bad_checkpoint: restart`."""
    if not folder.exists():
        return None, None
    if not params.resume:
        shutil.rmtree(folder)
        return None, None
    if params.method == "adalora":
        # peft keeps AdaLoRA's importance scores (which decide the ranks) outside the checkpoint and saves
        # its adapters already pruned, so no checkpoint can continue the same run: start over, and say so.
        print(f"finetune: {folder} holds an interrupted AdaLoRA run, which cannot be resumed (its rank "
              f"allocator is not checkpointed); training from the start", file=sys.stderr)
        shutil.rmtree(folder)
        return None, None
    try:
        run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        problem = None if run["fingerprint"] == fingerprint else "comes from other params, data or model"
    except (OSError, ValueError, KeyError, TypeError):
        run, problem = {}, f"has no readable {RUN_FILE}"
    checkpoint = None
    if problem is None:
        checkpoint, problem = _newest_complete_checkpoint(folder)
    if problem is not None:
        if params.on_bad_checkpoint == "error":
            raise PipelineError(f"{folder}: {problem}; delete it, or set finetune.on_bad_checkpoint: restart")
        print(f"finetune: {folder} {problem}; training from the start (finetune.on_bad_checkpoint: restart)", file=sys.stderr)
        shutil.rmtree(folder)
        return None, None
    return checkpoint, run["mlflow_run_id"]


def _newest_complete_checkpoint(folder: Path) -> tuple[str | None, str | None]:
    """(checkpoint, problem). trainer_state.json is the last file a checkpoint gets, so a folder without a
    readable one was cut short by the kill and is skipped; a complete one whose weights or optimizer state
    do not read is corrupt."""
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda p: _step_of(str(p)) or 0, reverse=True)
    for checkpoint in candidates:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for file in sorted(checkpoint.iterdir()):
            try:
                if file.suffix == ".safetensors":
                    from safetensors import safe_open

                    with safe_open(str(file), "pt"):
                        pass
                elif file.suffix in (".pt", ".pth", ".bin"):
                    zipfile.ZipFile(file).close()  # torch.save writes a zip; a cut file has no directory
            except Exception as exc:  # safetensors and zipfile each raise their own types
                return None, f"{file} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return str(checkpoint), None
    return None, None


def _start_run(run_id: str | None) -> Any:
    """mlflow.start_run, continuing `run_id` when resuming (a new run if the store no longer has it)."""
    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException:
            print(f"finetune: MLflow run {run_id} is gone; logging to a new run", file=sys.stderr)
    return mlflow.start_run()


def _model_hash(params: Params) -> str:
    """The pretrained weights' identity: the pinned sha256, or (a local folder) a hash of its files."""
    if params.model.sha256:
        return params.model.sha256
    folder = resolve_model(params.model)
    return tracking.hash_files(sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors")))


def _total_steps(args: Any, train_examples: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, -(-train_examples // (args.per_device_train_batch_size * args.gradient_accumulation_steps)))
    return int(np.ceil(per_epoch * args.num_train_epochs))


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
