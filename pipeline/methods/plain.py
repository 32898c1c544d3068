"""Methods without an adapter: `full` trains every parameter; `freeze` trains the task head, and optionally the
last k encoder layers, the embeddings and the layer norms."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.methods.base import Method
from pipeline.methods.specs import FreezeSpec, FullSpec
from pipeline.schema import FinetuneParams


class Full(FullSpec, Method):
    def prepare(self, model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
        if params.freeze_word_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model


class Freeze(FreezeSpec, Method):
    def prepare(self, model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
        _freeze(model, params)
        return model


def _freeze(model: Any, params: FinetuneParams) -> None:
    encoder = getattr(model, model.base_model_prefix)
    for parameter in encoder.parameters():
        parameter.requires_grad = False
    layers = _encoder_layers(model)
    k = params.freeze.top_k_layers
    if k > len(layers):
        raise PipelineError(f"finetune.freeze.top_k_layers: {k} exceeds the model's {len(layers)} encoder layers")
    trainable = list(layers)[len(layers) - k :]
    if params.freeze.train_embeddings:
        trainable.append(encoder.get_input_embeddings())
    if params.freeze.train_layer_norms:
        trainable += [m for m in encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True


def _encoder_layers(model: Any) -> torch.nn.ModuleList:
    """The stack of transformer layers: the ModuleList as long as the config's layer count (BERT's
    encoder.layer, DistilBERT's transformer.layer, ...), found rather than named per architecture."""
    encoder = getattr(model, model.base_model_prefix)
    count = model.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise PipelineError(f"finetune.freeze: cannot find the {count} encoder layers of {type(model).__name__}")
