"""Building the Trainer: shared by the finetune stage and the throughput benchmark, so the benchmark
measures exactly the training the pipeline runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from stages.params import FinetuneParams
from stages.tasks import get_task


def training_arguments(params: FinetuneParams, seed: int, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """Map the `finetune` params onto TrainingArguments: evaluate and checkpoint every epoch, keep the best."""
    greater_is_better = params.metric_for_best_model != "loss"
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
        optim="adamw_torch_fused",  # AdamW in one fused kernel: fewer passes over the weights per step
        # Length-grouped batches put texts of similar length together so per-batch padding stays small.
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=params.metric_for_best_model,
        greater_is_better=greater_is_better,
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


def build_trainer(
    model: Any,
    tokenizer: Any,
    task_name: str,
    labels: list[str],
    args: TrainingArguments,
    train_dataset: Any,
    eval_dataset: Any | None,
    callbacks: list[TrainerCallback] | None = None,
    threshold: float = 0.5,
) -> Trainer:
    task = get_task(task_name)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return task.validation_metrics(np.asarray(logits), np.asarray(prediction.label_ids), labels, threshold)

    return Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        # Dynamic padding: each batch is padded to its longest member, not to max_length.
        data_collator=task.collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )


class DvcLiveMetrics(TrainerCallback):
    """Write the Trainer's logs as DVC plot files, indexed by the optimizer step.

    transformers' own DVCLiveCallback advances the step on every log call, so train-loss rows and
    evaluation rows land on one made-up axis; this writes both against `global_step`.
    """

    def __init__(self, live: Any) -> None:
        self.live = live

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            # Skip bookkeeping and the end-of-training summary (train_loss, train_runtime, ...).
            if isinstance(value, (int, float)) and key not in ("epoch", "total_flos", "train_loss") and not key.endswith(("_runtime", "_per_second")):
                name = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
                self.live.log_metric(name, value)
        self.live.make_summary()
