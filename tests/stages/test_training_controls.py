"""Training controls of the `finetune` section on a tiny random BERT: each does what params.yaml says."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from helpers import set_params
from pipeline import data, paths
from pipeline.errors import PipelineError
from pipeline.methods.base import is_head_parameter
from pipeline.params import load_params
from pipeline.tasks.training import HOOKS
from pipeline.training import trainer
from pipeline.training.trainer import Prepared, class_weights, fit, loss_function, prepare

TRAIN_EXAMPLES = 128  # the tokenized fixture: 160 texts, 80 % in train


def prepared(root: Path, **changes: object) -> Prepared:
    set_params(root, {f"finetune.{k}": v for k, v in changes.items()})
    params = load_params()
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    return prepare(params, data.load_tokenized(paths.TOKENIZED), labels, root / "checkpoints")


def trained(root: Path, **changes: object) -> Prepared:
    run = prepared(root, **changes)
    fit(load_params(), run, root / "model")
    return run


def logged(run: Prepared, key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in run.trainer.state.log_history if key in row]


def test_sgd_uses_momentum_and_adamw_skips_decay_on_biases_and_layer_norms(tokenized_project: Path) -> None:
    sgd = prepared(tokenized_project, optimizer="sgd", momentum=0.8).trainer.create_optimizer()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    run = prepared(tokenized_project, optimizer="adamw", weight_decay=0.05)
    adamw = run.trainer.create_optimizer()
    assert isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in run.trainer.model.named_parameters()}
    for group in adamw.param_groups:
        decayed = {names[id(p)] for p in group["params"]}
        no_decay = {n for n in decayed if n.endswith("bias") or "LayerNorm" in n}
        assert (group["weight_decay"] == 0.0) == (no_decay == decayed), decayed


def test_head_has_its_own_learning_rate_through_the_schedule(tokenized_project: Path) -> None:
    run = trained(
        tokenized_project, learning_rate=1e-4, head_learning_rate=1e-2, max_steps=3, lr_scheduler_type="linear"
    )
    model = run.trainer.model
    names = {id(p): n for n, p in model.named_parameters()}
    ratios = set()
    for group in run.trainer.optimizer.param_groups:
        heads = {is_head_parameter(names[id(p)], model) for p in group["params"]}
        assert len(heads) == 1  # a group is all head or all encoder
        assert group["initial_lr"] == (1e-2 if heads.pop() else 1e-4)
        ratios.add(round(group["lr"] / group["initial_lr"], 9))
    assert len(ratios) == 1  # both rates follow the same schedule
    assert any(n.startswith("classifier.") for n in names.values())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_layer_learning_rate_decay_lowers_each_layer_below_the_top_and_the_embeddings_most(
    method: str, tokenized_project: Path
) -> None:
    run = prepared(tokenized_project, method=method, learning_rate=1e-3, layer_learning_rate_decay=0.5)
    optimizer = run.trainer.create_optimizer()
    model = run.trainer.model
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert sorted(rate) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once
    expected = {"head": 1e-3, "layer 1": 1e-3, "layer 0": 5e-4, "embeddings": 2.5e-4, "pooler": 1e-3}
    seen = {}
    for name, lr in rate.items():
        part = next(
            part
            for part, marker in [
                ("head", "classifier"),
                ("layer 1", "encoder.layer.1."),
                ("layer 0", "encoder.layer.0."),
                ("embeddings", "embeddings."),
                ("pooler", "pooler."),
            ]
            if marker in name
        )
        assert lr == pytest.approx(expected[part]), name
        seen[part] = True
    # LoRA trains adapters in the layers (peft's BERT default: query, value) and the head only.
    assert set(seen) == (set(expected) if method == "full" else {"head", "layer 1", "layer 0"})


def test_one_learning_rate_leaves_the_optimizer_to_trainer(tokenized_project: Path) -> None:
    run = prepared(tokenized_project, learning_rate=1e-3, layer_learning_rate_decay=1.0)
    optimizer = run.trainer.create_optimizer()
    assert {group["lr"] for group in optimizer.param_groups} == {1e-3}
    assert len(optimizer.param_groups) == 2  # Trainer's decay and no-decay groups


@pytest.mark.parametrize(
    "scheduler, quarter", [("constant", 1.0), ("linear", 0.75), ("cosine", 0.5 * (1 + math.cos(math.pi / 4)))]
)
def test_learning_rate_schedule(scheduler: str, quarter: float, tokenized_project: Path) -> None:
    run = trained(
        tokenized_project,
        lr_scheduler_type=scheduler,
        warmup_ratio=0.0,
        max_steps=16,
        logging_steps=1,
        learning_rate=1e-3,
    )
    rates = dict(logged(run, "learning_rate"))
    # The rate logged at step s is the one step s used: (s - 1) / 16 of the decay was done.
    assert rates[5] == pytest.approx(1e-3 * quarter, rel=1e-6)


def test_warmup_rises_to_the_learning_rate_then_decays(tokenized_project: Path) -> None:
    run = trained(
        tokenized_project,
        lr_scheduler_type="linear",
        warmup_ratio=0.25,
        max_steps=16,
        logging_steps=1,
        learning_rate=1e-3,
    )
    rates = [lr for _, lr in logged(run, "learning_rate")]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(1e-3) and peak == 4 and rates[0] == 0.0  # 4 warmup steps, from 0
    assert rates[: peak + 1] == sorted(rates[: peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)


def test_dropout_overrides_reach_the_model(tokenized_project: Path) -> None:
    model = prepared(tokenized_project, dropout={"hidden": 0.3, "attention": 0.2, "classifier": 0.4}).trainer.model
    assert (
        model.config.hidden_dropout_prob,
        model.config.attention_probs_dropout_prob,
        model.config.classifier_dropout,
    ) == (0.3, 0.2, 0.4)
    assert model.dropout.p == 0.4
    assert model.bert.embeddings.dropout.p == 0.3
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2


def test_gradient_accumulation_takes_one_step_per_accumulated_batch(tokenized_project: Path) -> None:
    plain = trained(tokenized_project, num_train_epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    accumulated = trained(
        tokenized_project, num_train_epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=4
    )
    assert plain.trainer.state.global_step == TRAIN_EXAMPLES // 8
    assert accumulated.trainer.state.global_step == TRAIN_EXAMPLES // 32


def test_activation_checkpointing_recomputes_the_layers_and_trains_to_the_same_weights(tokenized_project: Path) -> None:
    plain = trained(tokenized_project, max_steps=3).trainer.model
    checkpointed = trained(tokenized_project, max_steps=3, activation_checkpointing=True).trainer.model
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    # Dropout included: the recomputed forward pass replays the first one's random state.
    for (name, before), (_, after) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_multiplies_in_bf16_and_keeps_the_weights_and_the_saved_model_in_fp32(tokenized_project: Path) -> None:
    run = prepared(tokenized_project, precision="bf16", max_steps=2)
    products: list[torch.dtype] = []
    linear = next(m for m in run.trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: products.append(output.dtype))
    fit(load_params(), run, tokenized_project / "model")
    assert run.trainer.args.bf16 and products[0] == torch.bfloat16  # the first training step
    # After training the model computes in fp32, as it is served: the temperature was fitted on that.
    products.clear()
    run.trainer.model(input_ids=torch.tensor([[2, 5, 7, 3]]))
    assert products == [torch.float32]
    assert {p.dtype for p in run.trainer.model.parameters()} == {torch.float32}
    saved = load_file(next((tokenized_project / "model").rglob("*.safetensors")))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert math.isfinite(run.trainer.state.log_history[-1]["train_loss"])


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_machine_multiplies_bf16_natively(
    native: bool, tokenized_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "computes_in_bf16", lambda: native)
    assert prepared(tokenized_project, precision="auto").trainer.args.bf16 == native
    assert not prepared(tokenized_project, precision="fp32").trainer.args.bf16
    assert prepared(tokenized_project, precision="bf16").trainer.args.bf16


def cpu_flags() -> set[str]:
    """The flags the kernel reports for this machine's first CPU (/proc/cpuinfo, x86 Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine decides by its GPU, not its CPU flags")
@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo (Linux) to read the CPU flags")
def test_bf16_detection_agrees_with_the_cpu_flags_the_kernel_reports() -> None:
    """Not stubbed: AVX-512 BF16 or AMX (tile) in /proc/cpuinfo means bf16 is native, anything else not."""
    flags = cpu_flags()
    assert flags, "no flags line in /proc/cpuinfo"
    assert trainer.computes_in_bf16() == bool({"avx512_bf16", "amx_tile"} & flags), sorted(flags)


def _change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    return math.sqrt(sum(float((p.detach() - before[n]).pow(2).sum()) for n, p in model.named_parameters()))


@pytest.mark.parametrize("max_grad_norm, bounded", [(1e-3, True), (1e3, False)])
def test_gradient_clipping_bounds_the_step(max_grad_norm: float, bounded: bool, tokenized_project: Path) -> None:
    # Plain SGD at learning rate 1: the update is the gradient, so its norm is the clipped gradient norm.
    run = prepared(
        tokenized_project,
        optimizer="sgd",
        momentum=0.0,
        learning_rate=1.0,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        max_steps=1,
        max_grad_norm=max_grad_norm,
    )
    before = {n: p.detach().clone() for n, p in run.trainer.model.named_parameters()}
    run.trainer.args.load_best_model_at_end = False  # compare with the weights after the one step
    run.trainer.train()
    change = _change(before, run.trainer.model)
    assert (change <= 1e-3 * 1.0001) == bounded, change


def test_max_steps_overrides_epochs_and_eval_steps_sets_the_evaluations(tokenized_project: Path) -> None:
    run = trained(tokenized_project, num_train_epochs=10, max_steps=9, eval_steps=3)
    assert run.trainer.state.global_step == 9
    assert [step for step, _ in logged(run, "eval_accuracy")] == [3, 6, 9]


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tokenized_project: Path) -> None:
    # A minimum improvement of 1.0 in accuracy is impossible: every evaluation after the first is "no better".
    run = trained(
        tokenized_project, num_train_epochs=20, eval_steps=2, early_stopping_patience=2, early_stopping_threshold=1.0
    )
    assert [step for step, _ in logged(run, "eval_accuracy")] == [2, 4, 6]
    assert run.trainer.state.global_step == 6


def test_without_patience_training_runs_every_epoch(tokenized_project: Path) -> None:
    run = trained(
        tokenized_project,
        num_train_epochs=3,
        per_device_train_batch_size=32,
        early_stopping_patience=None,
        early_stopping_threshold=1.0,
    )
    assert run.trainer.state.global_step == 3 * TRAIN_EXAMPLES // 32


@pytest.mark.parametrize(
    "metric, mode, pick", [("accuracy", "min", min), ("loss", "auto", min), ("accuracy", "auto", max)]
)
def test_best_checkpoint_follows_the_metric_and_mode(metric: str, mode: str, pick, tokenized_project: Path) -> None:
    run = trained(
        tokenized_project,
        num_train_epochs=3,
        eval_steps=4,
        metric_for_best_model=metric,
        early_stopping_mode=mode,
        early_stopping_patience=None,
    )
    values = [value for _, value in logged(run, f"eval_{metric}")]
    assert len(values) == 3 * TRAIN_EXAMPLES // 8 // 4
    assert run.trainer.state.best_metric == pick(values)


def test_auto_class_weights_are_inverse_train_frequencies() -> None:
    single = Dataset.from_dict({"labels": [0, 0, 0, 1]})
    np.testing.assert_allclose(
        class_weights("auto", single, HOOKS.for_task("single_label_classification"), 2), [4 / 6, 4 / 2]
    )
    tokens = Dataset.from_dict({"labels": [[-100, 0, 0, 1, -100], [-100, 0, 2, -100]]})
    np.testing.assert_allclose(
        class_weights("auto", tokens, HOOKS.for_task("token_classification"), 3), [5 / 9, 5 / 3, 5 / 3]
    )
    multi = Dataset.from_dict({"labels": [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]})
    np.testing.assert_allclose(
        class_weights("auto", multi, HOOKS.for_task("multi_label_classification"), 2), [1 / 3, 3 / 1]
    )
    assert class_weights([1.0, 5.0], single, HOOKS.for_task("single_label_classification"), 2).tolist() == [1.0, 5.0]


def test_class_weights_and_label_smoothing_change_the_loss() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-3.0, 3.0]])
    labels = torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert loss_function(HOOKS.for_task("single_label_classification"), None, 0.0) is None  # the model's own loss
    weighted = loss_function(HOOKS.for_task("single_label_classification"), torch.tensor([1.0, 4.0]), 0.0)(
        {"logits": logits}, labels
    )
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert weighted == pytest.approx(float((per_example * torch.tensor([1.0, 4.0, 4.0])).sum() / 3))
    assert weighted != pytest.approx(float(plain))
    smoothed = loss_function(HOOKS.for_task("single_label_classification"), None, 0.2)({"logits": logits}, labels)
    assert smoothed == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)))
    assert smoothed > plain  # confident right answers are pulled towards the other class
    multi = loss_function(HOOKS.for_task("multi_label_classification"), torch.tensor([1.0, 3.0]), 0.0)(
        {"logits": logits[:2]}, torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    )
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), pos_weight=torch.tensor([1.0, 3.0])
    )
    assert multi == pytest.approx(float(expected))


def test_class_weights_change_training(tokenized_project: Path) -> None:
    plain = trained(tokenized_project, max_steps=4, logging_steps=1)
    weighted = trained(tokenized_project, max_steps=4, logging_steps=1, class_weights=[1.0, 9.0])
    assert logged(plain, "loss") != logged(weighted, "loss")


def test_the_seed_decides_the_weights(tokenized_project: Path) -> None:
    def weights(seed: int) -> torch.Tensor:
        set_params(tokenized_project, {"seed": seed})
        return trained(tokenized_project, max_steps=3).trainer.model.classifier.weight.detach().clone()

    first = weights(1)
    assert torch.equal(first, weights(1))
    assert not torch.equal(first, weights(2))


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_logging_step_in_logs(tokenized_project: Path) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pipeline.training.trainer import ProgressLines, show_progress

    run = prepared(tokenized_project, max_steps=6, logging_steps=2, eval_steps=3)
    show_progress(run.trainer, _Stream(tty=True))
    kinds = {type(c) for c in run.trainer.callback_handler.callbacks}
    assert ProgressCallback in kinds and ProgressLines not in kinds and PrinterCallback not in kinds

    log = _Stream(tty=False)
    show_progress(run.trainer, log)
    kinds = {type(c) for c in run.trainer.callback_handler.callbacks}
    assert ProgressLines in kinds and ProgressCallback not in kinds and PrinterCallback not in kinds
    run.trainer.train()
    lines = log.getvalue().splitlines()
    steps = [line.split()[2] for line in lines]
    assert steps == ["2/6", "3/6", "4/6", "6/6", "6/6"], lines  # loss at 2, 4, 6; validation at 3 and 6
    assert all(line.startswith("finetune: step ") and "samples/s | ETA " in line for line in lines)
    assert "loss " in lines[0] and "accuracy " in lines[1] and "{" not in log.getvalue()  # no dict lines


@pytest.mark.parametrize("block_mib, own_mapping", [(5, True), (1.5, False)], ids=["5MiB-mapped", "1.5MiB-heap"])
def test_after_prepare_large_freed_buffers_leave_the_heap_instead_of_fragmenting_it(
    block_mib: float, own_mapping: bool
) -> None:
    """glibc's dynamic threshold would serve a 5 MiB block from the heap once an 8 MiB block was freed;
    with the fixed threshold set when training is prepared it gets its own mapping (returned on free). A 1.5 MiB
    block (a batch of 16 texts of 128 tokens in bf16) stays on the heap, where reusing it costs no page faults."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd")] + [
            (name, ctypes.c_size_t) for name in ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    trainer.return_freed_buffers_to_the_system()
    libc.free(libc.malloc(8 << 20))  # would raise a dynamic threshold to 8 MiB
    libc.malloc_trim(0)  # glibc serves a block from free heap top before mapping one: leave none
    mapped_before = libc.mallinfo2().hblks
    block = libc.malloc(int(block_mib * (1 << 20)))
    try:
        assert libc.mallinfo2().hblks == mapped_before + own_mapping
    finally:
        libc.free(block)


@pytest.mark.parametrize("multiple", [8, None], ids=["multiple-of-8", "longest-member"])
def test_training_and_validation_batches_are_padded_to_a_multiple_of_pad_to_multiple_of(
    tokenized_project: Path, multiple: int | None
) -> None:
    run = prepared(tokenized_project, pad_to_multiple_of=multiple, per_device_train_batch_size=4)
    batches = list(run.trainer.get_train_dataloader())
    longest = [int(batch["attention_mask"].sum(1).max()) for batch in batches]
    padded = [batch["input_ids"].shape[1] for batch in batches]
    evaluated = [batch["input_ids"].shape[1] for batch in run.trainer.get_eval_dataloader()]
    assert any(n % 8 for n in longest), longest  # the fixture's texts do not all come in multiples of 8
    if multiple:
        assert all(width % multiple == 0 for width in padded + evaluated), (padded, evaluated)
        assert padded == [-(-n // multiple) * multiple for n in longest]
    else:
        assert padded == longest


def test_a_pad_to_multiple_of_that_pads_past_the_models_positions_is_refused_naming_the_key(
    tokenized_project: Path,
) -> None:
    set_params(tokenized_project, {"tokenize.max_length": 121})  # fits the tiny model's 128 positions
    with pytest.raises(
        PipelineError,
        match=r"^finetune.pad_to_multiple_of: 10 pads batches of tokenize.max_length "
        r"121 to 130 tokens, past the 128 positions of the model",
    ):
        prepared(tokenized_project, pad_to_multiple_of=10)
    prepared(tokenized_project, pad_to_multiple_of=8)  # 128 tokens: fits


def test_a_batch_over_max_tokens_per_pass_runs_as_near_equal_slices_of_its_rows() -> None:
    batch = {"input_ids": torch.ones(5, 8, dtype=torch.long), "labels": torch.arange(5)}
    assert trainer.split_into_passes(batch, None) == [batch]
    assert trainer.split_into_passes(batch, 40) == [batch]  # 40 tokens: within the budget
    passes = trainer.split_into_passes(batch, 16)  # 40 tokens need 3 passes of at most 16
    assert [part["input_ids"].shape for part in passes] == [(2, 8), (2, 8), (1, 8)]
    assert torch.cat([part["labels"] for part in passes]).tolist() == [0, 1, 2, 3, 4]
    assert len(trainer.split_into_passes(batch, 1)) == 5  # never less than one text a pass


@pytest.mark.parametrize("loss", ["model-mean", "weighted-sum"])
def test_a_step_in_passes_has_the_gradient_and_loss_of_the_step_in_one_pass(tokenized_project: Path, loss: str) -> None:
    """The model's mean loss (divided by each pass's share of the rows) and a class-weighted loss summed over
    the step's items (Trainer's num_items_in_batch) both add up over passes to the one-pass step."""
    changes: dict[str, object] = {"precision": "fp32", "dropout": {"hidden": 0.0, "attention": 0.0, "classifier": 0.0}}
    if loss == "weighted-sum":
        changes["class_weights"] = "auto"
    results = []
    for max_tokens in (None, 1):
        run = prepared(tokenized_project, max_tokens_per_pass=max_tokens, per_device_train_batch_size=8, **changes)
        trainer = run.trainer
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.current_gradient_accumulation_steps = 2  # as inside a step of two accumulated batches
        items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        assert (items is None) == (loss == "model-mean")
        step_loss = trainer.training_step(trainer.model, batch, items)
        assert trainer.current_gradient_accumulation_steps == 2  # restored after the passes
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((step_loss, grads))
    (one_loss, one_grads), (passes_loss, passes_grads) = results
    torch.testing.assert_close(passes_loss, one_loss, rtol=1e-5, atol=1e-6)
    assert one_grads.keys() == passes_grads.keys() and len(one_grads) > 10
    for name in one_grads:
        torch.testing.assert_close(passes_grads[name], one_grads[name], rtol=1e-4, atol=1e-6, msg=name)
