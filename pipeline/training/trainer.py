"""Training: the Trainer set-up and the run that saves a model folder with its card, shared by the finetune
stage and the benchmarks, so a benchmark measures exactly the training the pipeline runs."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from pipeline.card import EncodingSpec, ModelCard, Provenance, TrainingStats
from pipeline.errors import PipelineError
from pipeline.methods.base import BASE_DIR, folder_bytes, is_head_parameter, parameter_counts
from pipeline.methods.registry import get_method
from pipeline.schema import FinetuneParams, Params, TokenizeParams
from pipeline.tasks.base import TrainingHooks
from pipeline.tasks.training import HOOKS
from pipeline.training import distributed
from pipeline.training.checkpoints import ChecksumCheckpoints, step_of
from pipeline.training.modeling import (
    load_for_training,
    load_tokenizer,
    require_finite_weights,
    require_fits_positions,
    resolve_model,
)


def computes_in_bf16() -> bool:
    """Whether this machine multiplies bf16 matrices natively: a CUDA GPU that supports bf16, or an x86 CPU
    with AVX-512 BF16 or AMX. Elsewhere (AVX2, AVX-512 without BF16) oneDNN emulates bf16 and it is slower
    than fp32. torch exposes the CPU checks only as torch.cpu._is_*_supported."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def mixed_precision(params: FinetuneParams) -> bool:
    """`finetune.precision` resolved on this machine: True trains under bf16 autocast."""
    return params.precision == "bf16" or (params.precision == "auto" and computes_in_bf16())


def training_arguments(params: FinetuneParams, seed: int, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """Map the `finetune` params onto TrainingArguments: evaluate and checkpoint every epoch (or every
    `eval_steps`), keep the best."""
    strategy = "steps" if params.eval_steps else "epoch"
    bf16 = mixed_precision(params)
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
        # transformers 5's name for gradient checkpointing (non-reentrant by default, so adapters need no
        # input gradients).
        activation_checkpointing=params.activation_checkpointing,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=params.eval_steps,
        save_steps=params.eval_steps,
        save_total_limit=1,  # the newest checkpoint (to resume from) and the best (kept besides by the Trainer)
        # A method whose checkpoints a later model cannot load (AdaLoRA's pruned ranks) keeps its final weights.
        load_best_model_at_end=get_method(params.method).reloads_best_checkpoint,
        metric_for_best_model=params.metric_for_best_model,
        greater_is_better=params.greater_is_better,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        seed=seed,
        data_seed=seed,
        report_to=[],
        logging_nan_inf_filter=False,  # a non-finite loss stops training (PipelineTrainer); logs show real values
        disable_tqdm=True,
        # bf16 autocast around the forward pass (accelerate's); the weights and AdamW state stay fp32.
        bf16=bf16,
        # accelerate trains data-parallel, and in bf16, on CPU only when told the processes are CPU ones.
        use_cpu=(distributed.launched() or bf16) and not torch.cuda.is_available(),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Under torchrun (pipeline/training/distributed.py): the process group the stage joined; every method's
        # trainable parameters all get gradients, so DDP need not search the graph for unused ones.
        ddp_backend=distributed.backend(params.distributed) if distributed.launched() else None,
        ddp_find_unused_parameters=False,
        # Over several machines each keeps its checkpoints in its own checkout (written by its first process),
        # so every process can load the best weights and resume from local files.
        save_on_each_node=params.distributed.nnodes > 1,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def class_weights(
    setting: str | list[float] | None, train_dataset: Any, task: TrainingHooks, n_labels: int
) -> torch.Tensor | None:
    """`finetune.class_weights` as a tensor: a list as given, `auto` from the train split's targets as the
    task balances them (single-label and tags: n / (classes * count), sklearn's "balanced"; label sets:
    negatives / positives of each label)."""
    if setting is None:
        return None
    if isinstance(setting, list):
        if len(setting) != n_labels:
            raise PipelineError(f"finetune.class_weights: {len(setting)} weights for {n_labels} labels")
        return torch.tensor(setting, dtype=torch.float32)
    return torch.tensor(task.balanced_class_weights(train_dataset["labels"], n_labels), dtype=torch.float32)


def loss_function(
    task: TrainingHooks, weights: torch.Tensor | None, label_smoothing: float
) -> Callable[..., torch.Tensor] | None:
    """The Trainer's `compute_loss_func` when class weights or label smoothing change the task's loss;
    None keeps the model's own loss. transformers' LabelSmoother has no class weights and treats every task
    as single-label, hence this. The sum is divided by the items of the whole accumulated batch, as the
    Trainer expects of a compute_loss_func under gradient accumulation."""
    if weights is None and not label_smoothing:
        return None

    def compute_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"]
        loss, items = task.weighted_loss(
            logits, labels, weights.to(logits.device) if weights is not None else None, label_smoothing
        )
        return loss / (num_items_in_batch if num_items_in_batch is not None else max(items, 1))

    return compute_loss


def split_into_passes(inputs: dict[str, Any], max_tokens: int | None) -> list[dict[str, Any]]:
    """A batch of more padded tokens than `max_tokens` as near-equal slices of its rows, as many as it takes
    `max_tokens` to hold its tokens; a batch within it (or `max_tokens` None) as itself."""
    rows, tokens = len(inputs["input_ids"]), inputs["input_ids"].numel()
    if max_tokens is None or tokens <= max_tokens:
        return [inputs]
    count = min(rows, -(-tokens // max_tokens))
    slices = {key: value.tensor_split(count) for key, value in inputs.items()}
    return [{key: slices[key][i] for key in inputs} for i in range(count)]


# A parameter's encoder layer, by the layer lists' names in transformers (BERT's encoder.layer, Llama's
# layers, GPT-2's h, T5's block), under peft's wrappers too.
LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")


def learning_rates(
    model: Any, learning_rate: float, head_learning_rate: float | None, layer_decay: float
) -> dict[str, float]:
    """Each trainable parameter's peak learning rate. The head's is `head_learning_rate` (null: learning_rate).
    Layer-wise decay (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification"): of n encoder layers,
    layer i learns at learning_rate * layer_decay ** (n - 1 - i), so the general features of the lower layers
    move least; the parameters before the first layer (the embeddings) at layer_decay ** n, those after the
    last (a pooler, a final norm) at learning_rate. Written here because Trainer and peft have one rate a
    group and no layer-wise option."""
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    layers = {name: int(match.group(1)) for name in trainable if (match := LAYER_INDEX.search(name))}
    count = max(layers.values(), default=-1) + 1
    rates, before_the_layers = {}, True
    for name in trainable:  # named_parameters runs from the input to the output
        if is_head_parameter(name, model):
            rates[name] = head_learning_rate or learning_rate
            continue
        if name in layers:
            before_the_layers, depth = False, count - 1 - layers[name]
        else:
            depth = count if before_the_layers else 0
        rates[name] = learning_rate * layer_decay**depth
    return rates


class PipelineTrainer(Trainer):
    """The Trainer with three changes: the task head may have its own learning rate (`head_learning_rate`)
    and the encoder's layers decaying ones (`layer_learning_rate_decay`), which Trainer's optimizer set-up
    has no option for (decay / no-decay groups stay as Trainer makes them); a batch of more tokens than
    `max_tokens_per_pass` runs as several forward and backward passes into the same step (Trainer's gradient
    accumulation splits every batch alike, short ones too); and a non-finite loss stops training with one
    line instead of training on (the Trainer's logging_nan_inf_filter would even hide it from the logs)."""

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        passes = split_into_passes(inputs, self.max_tokens_per_pass)
        steps, rows = self.current_gradient_accumulation_steps, len(inputs["input_ids"])
        losses = []
        try:
            for part in passes:
                # Trainer divides a mean loss by the batches accumulated into the step; dividing it further by
                # the pass's share of the rows makes the passes' gradients sum to the batch's. (A loss summed
                # over num_items_in_batch is not divided, and its passes sum exactly.) Under DDP every pass of
                # the step's last batch all-reduces the gradient: the sum is the same, with more traffic.
                self.current_gradient_accumulation_steps = steps * rows / len(part["input_ids"])
                losses.append(super().training_step(model, part, num_items_in_batch))
        finally:
            self.current_gradient_accumulation_steps = steps
        loss = torch.stack(losses).sum()
        if not torch.isfinite(loss).all():
            raise PipelineError(
                f"finetune: the training loss is {loss.item()} at step {self.state.global_step + 1}; stopped, no model "
                "saved (lower finetune.learning_rate or check the data; if it resumed, delete checkpoints/)"
            )
        return loss

    def __init__(
        self,
        *args: Any,
        head_learning_rate: float | None = None,
        layer_learning_rate_decay: float = 1.0,
        max_tokens_per_pass: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.layer_learning_rate_decay = layer_learning_rate_decay
        self.max_tokens_per_pass = max_tokens_per_pass

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        one_rate = self.head_learning_rate is None and self.layer_learning_rate_decay == 1.0
        if self.optimizer is not None or one_rate:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        rates = learning_rates(model, self.args.learning_rate, self.head_learning_rate, self.layer_learning_rate_decay)
        groups: dict[tuple[bool, float], list] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((name in decay, rates[name]), []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(
            [
                {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0, "lr": rate}
                for (decayed, rate), params in groups.items()
            ],
            **optimizer_kwargs,
        )
        return self.optimizer


def build_trainer(
    model: Any,
    tokenizer: Any,
    task: TrainingHooks,
    labels: list[str],
    args: TrainingArguments,
    train_dataset: Any,
    eval_dataset: Any | None,
    callbacks: list[TrainerCallback] | None = None,
    params: FinetuneParams | None = None,
    tokenize: TokenizeParams | None = None,
) -> Trainer:
    """The Trainer for `model` (already prepared by its Method), with the task's collator and
    validation metrics and the loss, optimizer groups and callbacks the `finetune` params ask for
    (`tokenize`: what the task's validation metrics read of the outputs, for decoder tasks)."""
    threshold = params.threshold if params else 0.5
    callbacks = list(callbacks or [])
    if params is not None:
        callbacks += get_method(params.method).callbacks(model)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits, label_ids = task.metric_arrays(prediction.predictions, prediction.label_ids)
        return task.validation_metrics(logits, label_ids, labels, threshold)

    weights = class_weights(params.class_weights, train_dataset, task, len(labels)) if params else None
    trainer = PipelineTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        # Dynamic padding: each batch is padded to its longest member (rounded up to pad_to_multiple_of), not to
        # max_length.
        data_collator=task.collator(tokenizer, params.pad_to_multiple_of if params else None),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=task.metric_logits(tokenizer, labels, tokenize) if tokenize else None,
        compute_loss_func=loss_function(task, weights, params.label_smoothing if params else 0.0),
        callbacks=callbacks,
        head_learning_rate=params.head_learning_rate if params else None,
        layer_learning_rate_decay=params.layer_learning_rate_decay if params else 1.0,
        max_tokens_per_pass=params.max_tokens_per_pass if params else None,
    )
    trainer.model_accepts_loss_kwargs = task.model_loss_counts_items
    return trainer


def write_plots(log_history: list[dict[str, Any]], out_dir: Path, best: dict[str, float] | None = None) -> None:
    """The run's train-loss and validation rows as DVC plot files (dvclive's layout), indexed by the
    optimizer step, and the summary metrics.json with the newest value of each and `best_validation` (the
    evaluation whose weights were kept: what experiments are ranked by). Written from the Trainer's log
    history at the end, so a resumed run's curves hold the steps from before the interruption too.
    (transformers' DVCLiveCallback advances its step on every log call, putting train and evaluation rows
    on one made-up axis.)"""
    from dvclive import Live

    live = Live(dir=str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for logs in log_history:
        live.step = logs["step"]
        for key, value in logs.items():
            # Skip bookkeeping and the end-of-training summary (train_loss, train_runtime, ...).
            if (
                isinstance(value, (int, float))
                and key not in ("epoch", "step", "total_flos", "train_loss")
                and not key.endswith(("_runtime", "_per_second"))
            ):
                name = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
                live.log_metric(name, value)
    if best:
        live.summary["best_validation"] = best
    live.make_summary()  # the newest value of each metric
    live.end()


class ProgressLines(TrainerCallback):
    """One compact line per logging step when the output is not a terminal (CI, `dvc repro` logs): step of
    total, loss, samples/s and the time left. On a terminal the Trainer's own progress bar (tqdm) shows the
    same; its dict-per-log printer is replaced by this."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.started: float | None = None
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_step = time.perf_counter(), state.global_step  # a resumed run counts from its start

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:  # under DDP, rank 0 speaks for all
            return
        if not logs or self.started is None or state.global_step == self.first_step or not SHOWN_LOGS & logs.keys():
            return
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        left = elapsed / done * (state.max_steps - state.global_step)
        samples = done * global_batch_size(args)
        shown = " ".join(
            f"{k.removeprefix('eval_')} {v:.4g}" if k.startswith("eval_") else f"{k} {v:.4g}"
            for k, v in logs.items()
            if isinstance(v, float) and k in SHOWN_LOGS
        )
        print(
            f"finetune: step {state.global_step}/{state.max_steps} ({state.global_step / max(state.max_steps, 1):.0%}) "
            f"{shown} | {samples / elapsed:.1f} samples/s | ETA {_duration(left)}",
            file=self.stream,
            flush=True,
        )


SHOWN_LOGS = {"loss", "grad_norm", "eval_loss", "eval_accuracy", "eval_f1", "eval_micro_f1", "eval_macro_f1"}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def show_progress(trainer: Trainer, stream: Any = None) -> None:
    """A progress bar with ETA on a terminal (the Trainer's own), compact lines otherwise."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    stream = stream or sys.stderr
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(ProgressLines)
    trainer.add_callback(ProgressCallback() if stream.isatty() else ProgressLines(stream))


MMAP_THRESHOLD_BYTES = 4 << 20  # a batch's largest activation buffers (MiniLM, 16-32 texts) are 4-16 MiB


def return_freed_buffers_to_the_system() -> None:
    """Serve allocations of MMAP_THRESHOLD_BYTES and more by their own mmap, unmapped when freed.

    Why by hand: glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), after which
    activation buffers come from the heap; with batches of changing lengths (group_by_length) the heap
    fragments and its free holes stay resident: the finetune's peak RSS grew by about 0.5 GiB over three
    epochs that way. A fixed threshold (what MALLOC_MMAP_THRESHOLD_ sets before a process starts) stops it;
    torch has no CPU caching allocator that would. Measured on the default data, 120 steps of 16 texts in fp32,
    two runs each on 2 idle cores: 41 and 41 s with it, 42 and 40 s without; peak RSS 1,347 and 1,319 MiB
    against 1,386 and 1,425 MiB. A lower threshold keeps less but costs a page fault per fresh buffer: in bf16
    (steps 11-200, one run each, load 0.6-1.9), with batches padded to a multiple of 8 tokens, 1 MiB took 53.4 s
    at batch 16 x 2 accumulated where 4 MiB took 47.6-48.2 s, and 48.8 s at batch 32 where 4 MiB took 38.1 s.
    A no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)


ONEDNN_KERNEL_CACHE = 32  # oneDNN's default keeps 1,024 compiled kernels


def bound_the_kernel_cache() -> None:
    """Keep at most ONEDNN_KERNEL_CACHE compiled oneDNN kernels (a user's ONEDNN_PRIMITIVE_CACHE_CAPACITY wins).

    Why by hand: under bf16 autocast on CPU, torch runs the matrix products through oneDNN, which compiles
    and caches a kernel, with its buffers, per shape; length-grouped batches bring a new sequence length,
    so new shapes, every few steps, and the cache held hundreds of MiB by the end of training. oneDNN reads
    the variable when it first creates a kernel, so this runs before training. Measured on the default data,
    300 steps of the default training in bf16 on 2 cores: peak RSS 1,465 MiB and 76.9 s with 32 kernels,
    1,674 MiB and 77.5 s with 1,024, 1,415 MiB and 89.9 s with none."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_KERNEL_CACHE))


@dataclass
class Prepared:
    """A model ready to train: everything that can fail on a bad param is done before training starts."""

    trainer: Any
    tokenizer: Any
    task: TrainingHooks
    pretrained_dir: Path
    labels: list[str]
    trainable_params: int
    total_params: int


def prepare(params: Params, datasets: Any, labels: list[str], checkpoints: Path) -> Prepared:
    """The pretrained model with its new head, prepared for `finetune.method`, inside its Trainer."""
    finetune = params.finetune
    return_freed_buffers_to_the_system()
    bound_the_kernel_cache()
    task = HOOKS.for_task(params.task)
    model_dir = resolve_model(params.model)
    require_fits_positions(model_dir, params.tokenize.max_length, finetune.pad_to_multiple_of)
    tokenizer = load_tokenizer(model_dir)
    set_seed(params.seed)  # before the head is initialised, so the same seed gives the same model
    model = load_for_training(
        model_dir, task, labels, finetune.dropout, params.model.random_init, finetune.classifier_pooling
    )
    args = training_arguments(finetune, params.seed, checkpoints)
    model = get_method(finetune.method).prepare(
        model, finetune, task.peft_task_type, total_steps(args, len(datasets["train"]))
    )
    trainable, total = parameter_counts(model)
    stopping = (
        [EarlyStoppingCallback(finetune.early_stopping_patience, finetune.early_stopping_threshold)]
        if finetune.early_stopping_patience
        else []
    )
    trainer = build_trainer(
        model,
        tokenizer,
        task,
        labels,
        args,
        datasets["train"],
        datasets["validation"],
        stopping,
        params=finetune,
        tokenize=params.tokenize,
    )
    trainer.add_callback(ChecksumCheckpoints())
    show_progress(trainer)
    return Prepared(trainer, tokenizer, task, model_dir, labels, trainable, total)


def fit(
    params: Params,
    prepared: Prepared,
    model_out: Path | None,
    resume_from: str | None = None,
    plots_out: Path | None = None,
    provenance: Provenance | None = None,
) -> ModelCard | None:
    """Train, save the best model and its card to `model_out` (and the learning curves to `plots_out`):
    the training the stage runs, shared with the method-comparison benchmark so both measure the same
    thing. Returns the card written; None for `model_out` None (a DDP rank other than 0: it trains and
    validates in step, and writes nothing)."""
    trainer = prepared.trainer
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started
    # Under bf16 (finetune.precision) accelerate wrapped the model's forward in autocast. The served model
    # runs in fp32, so the wrapper goes before the temperature and thresholds are fitted on its outputs.
    extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)

    # The best evaluation's weights are loaded (load_best_model_at_end); the temperature and the thresholds
    # are fitted on them, from one pass over the validation split (made only if a task asks for it).
    cached: list[tuple[np.ndarray, np.ndarray]] = []

    def validation_outputs() -> tuple[np.ndarray, np.ndarray]:
        if not cached:
            output = trainer.predict(trainer.eval_dataset)
            cached.append(prepared.task.metric_arrays(output.predictions, output.label_ids))
        return cached[0]

    require_finite_weights(trainer.model, "finetune: the trained model")
    temperature = prepared.task.fit_temperature(validation_outputs) if params.finetune.temperature_scaling else 1.0

    def calibrated_outputs() -> tuple[np.ndarray, np.ndarray]:  # thresholds are tuned on the scores served
        logits, label_ids = validation_outputs()
        return logits / temperature, label_ids

    thresholds = prepared.task.decision_thresholds(calibrated_outputs, params.finetune, len(prepared.labels))
    if model_out is None:
        return None
    get_method(params.finetune.method).save(
        trainer.model, model_out, prepared.pretrained_dir, params.finetune.merge_adapter
    )
    prepared.tokenizer.save_pretrained(model_out)
    stats = TrainingStats(
        global_step=trainer.state.global_step,
        best_checkpoint_step=step_of(trainer.state.best_model_checkpoint),
        best_metric_name=params.finetune.metric_for_best_model,
        best_metric=trainer.state.best_metric,
        resumed_from_step=step_of(resume_from),
        train_seconds=round(train_seconds, 1),
        train_samples_per_second=result.metrics.get("train_samples_per_second"),
        processes=trainer.args.world_size,
        global_train_batch_size=global_batch_size(trainer.args),
        trainable_params=prepared.trainable_params,
        total_params=prepared.total_params,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        # The card is written last; its own few hundred bytes are not counted.
        artifact_bytes=folder_bytes(model_out),
        trained_bytes=folder_bytes(model_out, exclude=BASE_DIR),
    )
    if plots_out is not None:
        best = {stats.best_metric_name: stats.best_metric, "step": stats.best_checkpoint_step}
        write_plots(trainer.state.log_history, plots_out, best)
    card = ModelCard(
        task=params.task,
        labels=prepared.labels,
        encoding=EncodingSpec(
            **params.tokenize.model_dump(exclude={"prompt", "max_unknown_share"}),  # a tokenize-time check
            text_pair=params.ingest.text_pair,
            prompt=params.tokenize.prompt if prepared.task.reads_prompts else None,
        ),
        thresholds=thresholds,
        temperature=temperature,
        method=params.finetune.method,
        merged_adapter=params.finetune.merge_adapter,
        base_model=params.model.source,
        train_examples=len(trainer.train_dataset),
        provenance=provenance,
        training=stats,
    )
    card.write(model_out)
    return card


def global_batch_size(args: Any) -> int:
    """Examples per optimizer step over every process: per device x accumulation x processes."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


def total_steps(args: Any, train_examples: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, -(-train_examples // global_batch_size(args)))
    return int(np.ceil(per_epoch * args.num_train_epochs))
