"""What params validation and every stage may know of a fine-tuning method, without its code: its name,
its params section (`finetune.<name>`), and what it can and cannot do (merge, resume, reload the best
checkpoint, train from random weights). The method's code (how it prepares, trains and saves a model) is
its class in plain.py or adapters.py, a subclass of its spec here; so a change to that code re-runs
training, not ingest.

A new method is a spec here (with its section, if it has params, and a field of that name in
`FinetuneParams`), a class on `Method` beside the others, and an entry in each registry.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from pipeline.fields import Int, Section


class MethodSpec:
    """One way to fine-tune, as params see it."""

    name: ClassVar[str]  # the value of `finetune.method`
    description: ClassVar[str]  # one line, shown by `python -m pipeline.params --explain finetune.method`
    section: ClassVar[type[Section] | None] = None  # its params, `finetune.<name>` (None: it has none)
    trains_every_weight: ClassVar[bool] = False  # can start from random weights (model.random_init)
    mergeable: ClassVar[bool] = False  # finetune.merge_adapter: folds its adapter into the weights when saved
    freezes_word_embeddings: ClassVar[bool] = False  # finetune.freeze_word_embeddings applies to it
    # The Trainer reloads the best checkpoint at the end (load_best_model_at_end): a method whose checkpoints
    # a later model cannot load keeps its final weights instead.
    reloads_best_checkpoint: ClassVar[bool] = True
    not_resumable: ClassVar[str | None] = None  # why a killed run of this method starts over, if it must


class FreezeParams(Section):
    """method freeze: the encoder is frozen and only the task head trains, unless these open more of it."""

    top_k_layers: Int = Field(
        default=0, ge=0, description="method freeze: the last k encoder layers train too (0: head only)"
    )
    train_embeddings: bool = Field(default=False, description="method freeze: the embeddings train too")
    train_layer_norms: bool = Field(
        default=False, description="method freeze: every LayerNorm of the encoder trains (a few thousand parameters)"
    )


class FullSpec(MethodSpec):
    name: ClassVar[str] = "full"
    description: ClassVar[str] = "every parameter (finetune.freeze_word_embeddings: all but the word embeddings)"
    trains_every_weight: ClassVar[bool] = True
    freezes_word_embeddings: ClassVar[bool] = True


class FreezeSpec(MethodSpec):
    name: ClassVar[str] = "freeze"
    description: ClassVar[str] = "the task head, and what finetune.freeze names (top layers, embeddings, norms)"
    section: ClassVar[type[Section] | None] = FreezeParams


class LoraParams(Section):
    r: Int = Field(default=8, ge=1, description="rank of each low-rank update")
    alpha: float = Field(default=16, gt=0, description="scaling of the update (alpha / r)")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        default=None,
        description="modules that get adapters; null: peft's default for the architecture (BERT: query, value)",
    )


class LoraSpec(MethodSpec):
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "low-rank updates of the attention projections (finetune.lora), peft"
    section: ClassVar[type[Section] | None] = LoraParams
    mergeable: ClassVar[bool] = True


class AdaLoraParams(Section):
    init_r: Int = Field(default=12, ge=1, description="every adapted matrix starts with this rank")
    target_r: Int = Field(default=4, ge=1, description="the rank budget is pruned to this average rank")
    tinit: float = Field(default=0.1, ge=0, lt=1, description="share of the training steps before pruning starts")
    tfinal: float = Field(default=0.3, ge=0, lt=1, description="share of the steps at the end with the final ranks")
    delta_t: Int = Field(default=10, ge=1, description="steps between two budget reallocations")
    alpha: float = Field(default=32, gt=0, description="scaling of the update")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        default=None, description="modules that get adapters; null: peft's default"
    )

    @model_validator(mode="after")
    def _schedule_fits(self) -> AdaLoraParams:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r must not exceed init_r (got {self.target_r} > {self.init_r})")
        if self.tinit + self.tfinal >= 1:
            raise ValueError(f"tinit + tfinal must leave steps for pruning (got {self.tinit} + {self.tfinal})")
        return self


class AdaLoraSpec(MethodSpec):
    name: ClassVar[str] = "adalora"
    description: ClassVar[str] = "LoRA whose ranks are pruned to a budget during training (finetune.adalora), peft"
    section: ClassVar[type[Section] | None] = AdaLoraParams
    mergeable: ClassVar[bool] = True
    # Its checkpoints are saved with the ranks of their step, which the pruned model of a later step cannot
    # load: it keeps its final weights (the schedule's end, ranks fixed) instead of the best.
    reloads_best_checkpoint: ClassVar[bool] = False
    # peft keeps the importance scores (which decide the ranks) outside the checkpoint and saves the adapters
    # already pruned, so no checkpoint can continue the same run.
    not_resumable: ClassVar[str | None] = "its rank allocator is not checkpointed"


class PrefixParams(Section):
    num_virtual_tokens: Int = Field(
        default=20, ge=1, description="virtual key/value positions prepended in every layer"
    )
    projection: bool = Field(
        default=False, description="reparametrise the prefix through a two-layer MLP (more trainable parameters)"
    )


class PrefixSpec(MethodSpec):
    name: ClassVar[str] = "prefix"
    description: ClassVar[str] = "trained key/value vectors prepended to every layer (finetune.prefix), peft"
    section: ClassVar[type[Section] | None] = PrefixParams


class Ia3Params(Section):
    target_modules: list[str] | None = Field(
        default=None, description="modules whose activations are rescaled; null: peft's default for the architecture"
    )
    feedforward_modules: list[str] | None = Field(
        default=None, description="which of them scale the input (feed-forward) instead of the output"
    )


class IA3Spec(MethodSpec):
    name: ClassVar[str] = "ia3"
    description: ClassVar[str] = "learnt rescaling of keys, values and feed-forward activations (finetune.ia3), peft"
    section: ClassVar[type[Section] | None] = Ia3Params
    mergeable: ClassVar[bool] = True


class DoraParams(LoraParams):
    """method dora: LoRA's keys (DoRA is LoRA with its update split into a magnitude and a direction)."""


class DoraSpec(MethodSpec):
    name: ClassVar[str] = "dora"
    description: ClassVar[str] = (
        "LoRA with weight decomposition: a trained magnitude per output and a low-rank direction (finetune.dora), peft"
    )
    section: ClassVar[type[Section] | None] = DoraParams
    mergeable: ClassVar[bool] = True


METHOD_SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (FullSpec(), FreezeSpec(), LoraSpec(), DoraSpec(), AdaLoraSpec(), PrefixSpec(), IA3Spec())
}
