"""Stage 4: fine-tune the pretrained model on the tokenized train split.

`finetune.method` decides what trains (pipeline/methods.py). Evaluates on the validation split every
epoch (or every `eval_steps`), stops early when the validation metric stops improving, and keeps the best
weights. Writes the model folder (weights or adapter, tokenizer, model card), per-step train loss and
per-evaluation validation metrics as DVC plots, and logs the run to MLflow with its params, per-step
metrics, git commit, data hash and cost (trainable parameters, time, peak memory, artifact size).

A finetune killed at any moment continues from its newest complete checkpoint (`checkpoints/`) in the
same MLflow run on the next `dvc repro` (pipeline/training/checkpoints.py).

With `finetune.distributed` asking for more than one process, the stage runs itself under torchrun and
trains data-parallel (pipeline/training/distributed.py); rank 0 does all the writing. On a second machine:
`python -m stages.finetune --node-rank 1`.
"""

from __future__ import annotations

import argparse
import shutil
import sys

import mlflow
from transformers.integrations import MLflowCallback

from pipeline import data, paths, tracking
from pipeline.card import Provenance
from pipeline.data.sources import tree_sha256
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.params import flat_params, load_params
from pipeline.schema import Params
from pipeline.training.checkpoints import RUN_FILE, checkpoint_to_resume
from pipeline.training.modeling import resolve_model
from pipeline.training.trainer import Prepared, distributed, fit, global_batch_size, prepare

# The sections whose values shape the trained model: the run's MLflow params and the checkpoint
# fingerprint. dvc.yaml lists each of them as a param of this stage.
TRAINING_SECTIONS = ("seed", "task", "ingest", "split", "model", "tokenize", "finetune")
# Params that change how a run is resumed, not what it trains: left out of the checkpoint fingerprint.
# Where the processes meet is not what they train.
RESUME_KEYS = (
    "finetune.resume",
    "finetune.on_bad_checkpoint",
    "finetune.distributed.rdzv_endpoint",
    "finetune.distributed.backend",
)


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--node-rank",
        type=int,
        default=0,
        help="this machine's rank when finetune.distributed.nnodes > 1 (node 0 runs dvc repro)",
    )
    node_rank = parser.parse_args(argv or []).node_rank
    params = load_params()
    nodes = params.finetune.distributed.nnodes
    if not 0 <= node_rank < nodes:
        raise PipelineError(f"--node-rank {node_rank}: finetune.distributed.nnodes is {nodes} (ranks 0 to {nodes - 1})")
    if distributed.needs_launch(params.finetune.distributed):
        distributed.launch(params.finetune.distributed, "stages.finetune", node_rank)
        return
    distributed.init_process_group(params.finetune.distributed)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    data_sha256 = tracking.hash_files(
        [paths.SPLIT / name for name in ("train.parquet", "validation.parquet", "labels.json")]
    )
    datasets = data.load_tokenized(paths.TOKENIZED)
    training_params = flat_params(params, TRAINING_SECTIONS)
    fingerprint = tracking.hash_json(
        {
            "params": {k: v for k, v in training_params.items() if k not in RESUME_KEYS},
            "data": data_sha256,
            "model": _model_hash(params),
        }
    )
    # One process inspects (and may delete) the checkpoints; every rank resumes from its answer.
    resume_from, run_id = distributed.decided_by_main(
        lambda: checkpoint_to_resume(paths.CHECKPOINTS, fingerprint, params.finetune)
    )
    prepared = prepare(params, datasets, labels, paths.CHECKPOINTS)
    if not distributed.is_main():
        _follow(params, prepared, resume_from)
        return
    global_batch = global_batch_size(prepared.trainer.args)

    tracking.configure(params.mlflow.experiment_name)
    with (
        atomic_dir(paths.MODEL) as model_out,
        atomic_dir(paths.TRAIN_LOGS) as logs_out,
        tracking.start_or_resume_run(run_id) as run,
    ):
        git = tracking.git_state()
        precision = "bf16" if prepared.trainer.args.bf16 else "fp32"  # finetune.precision as resolved here
        # finetune.classifier_pooling as resolved for this encoder (set in the config where it is not cls)
        pooling = getattr(prepared.trainer.model.config, "classifier_pooling", None)
        if resume_from is None:
            mlflow.log_params({**training_params, "global_train_batch_size": global_batch})
        mlflow.set_tags(
            {
                **git,
                "data_sha256": data_sha256,
                "task": params.task,
                "method": params.finetune.method,
                "precision": precision,
                **({"classifier_pooling": pooling} if pooling else {}),
                "stage": "finetune",
            }
        )
        paths.CHECKPOINTS.mkdir(exist_ok=True)
        data.write_json({"fingerprint": fingerprint, "mlflow_run_id": run.info.run_id}, paths.CHECKPOINTS / RUN_FILE)
        if resume_from:
            print(f"finetune: resuming from {resume_from} (MLflow run {run.info.run_id})", file=sys.stderr)
        print(
            f"finetune: {prepared.trainer.args.world_size} process(es) x {params.finetune.per_device_train_batch_size} "
            f"examples x {params.finetune.gradient_accumulation_steps} accumulation = global batch {global_batch}, "
            f"{precision}" + (f", {pooling}-pooled head" if pooling else ""),
            file=sys.stderr,
        )
        prepared.trainer.add_callback(MLflowCallback())  # per-step metrics into the active run
        provenance = Provenance(
            mlflow_run_id=run.info.run_id,
            **git,
            data_sha256=data_sha256,
            params_sha256=tracking.hash_json(training_params),
        )
        stats = fit(params, prepared, model_out, resume_from, plots_out=logs_out, provenance=provenance).training
        mlflow.log_metrics(
            {
                f"best_validation_{stats.best_metric_name}": stats.best_metric,
                "train_seconds": stats.train_seconds,
                "trainable_params": stats.trainable_params,
                "total_params": stats.total_params,
                "peak_rss_mib": stats.peak_rss_mib,
                "artifact_bytes": stats.artifact_bytes,
                "trained_bytes": stats.trained_bytes,
            }
        )
    shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)
    print(
        f"finetune: {params.finetune.method}, {stats.trainable_params:,} of {stats.total_params:,} parameters trained, "
        f"{stats.global_step} steps in {stats.train_seconds:.0f}s, best validation "
        f"{stats.best_metric_name} {stats.best_metric:.4f} (run {run.info.run_id})"
    )


def _follow(params: Params, prepared: Prepared, resume_from: str | None) -> None:
    """A DDP rank other than 0: trains and validates in step with rank 0, which writes everything. The
    first process of another machine keeps that machine's checkpoints (Trainer's save_on_each_node) and
    clears them as rank 0 does its own."""
    keeps_checkpoints = distributed.is_node_leader() and params.finetune.distributed.nnodes > 1
    if keeps_checkpoints and resume_from is None:
        shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)  # another run's
    fit(params, prepared, None, resume_from)
    if keeps_checkpoints:
        shutil.rmtree(paths.CHECKPOINTS, ignore_errors=True)


def _model_hash(params: Params) -> str:
    """The pretrained weights' identity: the pinned sha256, which resolving verified (a distribution, a
    file, or a folder's tree_sha256), or else the tree_sha256 of the resolved folder."""
    return params.model.sha256 or tree_sha256(resolve_model(params.model))


if __name__ == "__main__":
    main(sys.argv[1:])
