"""Building the Trainer: shared by the finetune stage and the throughput benchmark, so the benchmark
measures exactly the training the pipeline runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from stages import methods
from stages.errors import PipelineError
from stages.params import FinetuneParams
from stages.tasks import IGNORE_INDEX, get_task


def training_arguments(params: FinetuneParams, seed: int, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """Map the `finetune` params onto TrainingArguments: evaluate and checkpoint every epoch (or every
    `eval_steps`), keep the best."""
    strategy = "steps" if params.eval_steps else "epoch"
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=params.learning_rate,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_eval_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        weight_decay=params.weight_decay,
        lr_scheduler_type=params.lr_scheduler_type,
        max_grad_norm=params.max_grad_norm,
        # AdamW in one fused kernel: fewer passes over the weights per step.
        optim="adamw_torch_fused" if params.optimizer == "adamw" else "sgd",
        optim_args=f"momentum={params.momentum}" if params.optimizer == "sgd" else None,
        # Length-grouped batches put texts of similar length together so per-batch padding stays small.
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=params.eval_steps,
        save_steps=params.eval_steps,
        save_total_limit=1,  # the newest checkpoint (to resume from) and the best (kept besides by the Trainer)
        # AdaLoRA's checkpoints are saved with the ranks of their step, which the pruned model of a later step
        # cannot load: it keeps its final weights (the schedule's end, ranks fixed) instead of the best.
        load_best_model_at_end=params.method != "adalora",
        metric_for_best_model=params.metric_for_best_model,
        greater_is_better=params.greater_is_better,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        seed=seed,
        data_seed=seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def class_weights(setting: str | list[float] | None, train_dataset: Any, task_name: str, n_labels: int) -> torch.Tensor | None:
    """`finetune.class_weights` as a tensor: a list as given, `auto` from the train split's label counts
    (n / (classes * count), sklearn's "balanced"; multi-label: negatives / positives of each label)."""
    if setting is None:
        return None
    if isinstance(setting, list):
        if len(setting) != n_labels:
            raise PipelineError(f"finetune.class_weights: {len(setting)} weights for {n_labels} labels")
        return torch.tensor(setting, dtype=torch.float32)
    targets = train_dataset["labels"]
    if task_name == "multi_label_classification":
        positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
        return torch.tensor((len(targets) - positives) / np.maximum(positives, 1), dtype=torch.float32)
    flat = np.concatenate([np.ravel(t) for t in targets])
    counts = np.bincount(flat[flat != IGNORE_INDEX], minlength=n_labels).astype(np.float64)
    return torch.tensor(counts.sum() / (n_labels * np.maximum(counts, 1)), dtype=torch.float32)


def loss_function(task_name: str, weights: torch.Tensor | None, label_smoothing: float) -> Callable[..., torch.Tensor] | None:
    """The Trainer's `compute_loss_func` when class weights or label smoothing change the task's loss;
    None keeps the model's own loss. transformers' LabelSmoother has no class weights and treats every task
    as single-label, hence this. The sum is divided by the items of the whole accumulated batch, as the
    Trainer expects of a compute_loss_func under gradient accumulation."""
    if weights is None and not label_smoothing:
        return None
    multi_label = task_name == "multi_label_classification"

    def compute_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"]
        w = weights.to(logits.device) if weights is not None else None
        if multi_label:
            targets = labels.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=w, reduction="sum")
            items = labels.numel()
        else:
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=w,
                                                     ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing,
                                                     reduction="sum")
            items = int((labels != IGNORE_INDEX).sum())
        return loss / (num_items_in_batch if num_items_in_batch is not None else max(items, 1))

    return compute_loss


class PipelineTrainer(Trainer):
    """The Trainer with one change: the task head may have its own learning rate (`head_learning_rate`),
    which Trainer's optimizer set-up has no option for. Decay / no-decay groups stay as Trainer makes them."""

    def __init__(self, *args: Any, head_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.head_learning_rate is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((name in decay, methods.is_head_parameter(name, model)), []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(
            [{"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
              "lr": self.head_learning_rate if head else self.args.learning_rate}
             for (decayed, head), params in groups.items()],
            **optimizer_kwargs,
        )
        return self.optimizer


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates its rank budget from the gradients after each optimizer step (peft leaves the
    call to the training loop; Trainer does not make it)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.model.base_model.update_and_allocate(state.global_step)


def build_trainer(
    model: Any,
    tokenizer: Any,
    task_name: str,
    labels: list[str],
    args: TrainingArguments,
    train_dataset: Any,
    eval_dataset: Any | None,
    callbacks: list[TrainerCallback] | None = None,
    params: FinetuneParams | None = None,
) -> Trainer:
    """The Trainer for `model` (already prepared by methods.prepare), with the task's collator and
    validation metrics and the loss, optimizer groups and callbacks the `finetune` params ask for."""
    task = get_task(task_name)
    threshold = params.threshold if params else 0.5
    callbacks = list(callbacks or [])
    if params is not None and params.method == "adalora":
        callbacks.append(AdaLoraBudget(model))

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return task.validation_metrics(np.asarray(logits), np.asarray(prediction.label_ids), labels, threshold)

    weights = class_weights(params.class_weights, train_dataset, task_name, len(labels)) if params else None
    return PipelineTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        # Dynamic padding: each batch is padded to its longest member, not to max_length.
        data_collator=task.collator(tokenizer),
        compute_metrics=compute_metrics,
        compute_loss_func=loss_function(task_name, weights, params.label_smoothing if params else 0.0),
        callbacks=callbacks,
        head_learning_rate=params.head_learning_rate if params else None,
    )


def write_plots(log_history: list[dict[str, Any]], out_dir: Path) -> None:
    """The run's train-loss and validation rows as DVC plot files (dvclive's layout), indexed by the
    optimizer step. Written from the Trainer's log history at the end, so a resumed run's curves hold the
    steps from before the interruption too. (transformers' DVCLiveCallback advances its step on every log
    call, putting train and evaluation rows on one made-up axis.)"""
    from dvclive import Live

    live = Live(dir=str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for logs in log_history:
        live.step = logs["step"]
        for key, value in logs.items():
            # Skip bookkeeping and the end-of-training summary (train_loss, train_runtime, ...).
            if isinstance(value, (int, float)) and key not in ("epoch", "step", "total_flos", "train_loss") \
                    and not key.endswith(("_runtime", "_per_second")):
                name = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
                live.log_metric(name, value)
    live.make_summary()  # the newest value of each metric
    live.end()
