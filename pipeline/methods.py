"""Fine-tuning methods: which parameters train, and how the trained model is saved and loaded again.

`full` trains everything; `freeze` trains the task head (and optionally the last k encoder layers,
embeddings, layer norms); `lora`, `adalora`, `prefix` and `ia3` wrap the model with `peft`, which also
trains and saves the task head (`modules_to_save`). An adapter model folder holds the adapter, the task
config and a `base/` copy of the pretrained encoder, so it loads with no access to the source it came from.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.schema import PEFT_METHODS, FinetuneParams

BASE_DIR = "base"  # inside an adapter model folder: the pretrained encoder the adapter applies to
ADAPTER_CONFIG = "adapter_config.json"


def prepare(model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
    """The model ready to train with `params.method`: parameters frozen or wrapped by a peft adapter."""
    if params.method == "freeze":
        _freeze(model, params)
        return model
    if params.method == "full" and params.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        return model
    if params.method in PEFT_METHODS:
        from peft import get_peft_model

        config = peft_config(params, peft_task_type, total_steps)
        if params.method == "prefix" and "past_key_values" not in inspect.signature(model.forward).parameters:
            _accept_past_key_values(model)
        try:
            return _prefix_generates(get_peft_model(model, config))
        except ValueError as exc:  # e.g. target modules the model does not have
            raise PipelineError(f"finetune.{params.method}: {str(exc).splitlines()[0]}") from None
    return model


def _accept_past_key_values(model: Any) -> None:
    """Let peft's prefix tuning reach the encoder. peft looks for a `past_key_values` argument in the task
    model's forward; transformers 5 renamed it `cache` (BERT's attention still prepends whatever the cache
    holds), so peft refuses. This instance-level forward takes the old name and passes it on as `cache`."""
    forward = model.forward

    def forward_with_prefix(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        return forward(*args, cache=past_key_values, **kwargs)

    # The Trainer reads the forward's signature to keep the dataset columns it accepts: show the original's.
    signature = inspect.signature(forward)
    extra = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    forward_with_prefix.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters
        + [extra]
        + [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    )
    model.forward = forward_with_prefix


def _prefix_generates(model: Any) -> Any:
    """`model`, and a prefix-tuned decoder made able to generate (`_generate_with_old_cache_name`)."""
    if model.active_peft_config.peft_type == "PREFIX_TUNING" and hasattr(
        model, "base_model_prepare_inputs_for_generation"
    ):
        _generate_with_old_cache_name(model)
    return model


def _generate_with_old_cache_name(model: Any) -> None:
    """Let a prefix-tuned decoder generate. peft's generation step looks for the KV cache, and injects the
    prefix into it, under transformers 4's `past_key_values`; transformers 5's input preparation hands the
    cache over as `cache`, so peft would inject the prefix again at every step and the forward would get
    both names. The cache is renamed back here for peft; the forward above turns it into `cache` again."""
    prepare = model.base_model_prepare_inputs_for_generation

    def prepare_with_old_name(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    model.base_model_prepare_inputs_for_generation = prepare_with_old_name


def peft_config(params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
    """The peft config of `params.method`; `peft_task_type` is the task's (Task.peft_task_type): SEQ_CLS and
    TOKEN_CLS make peft add the task head ("classifier"/"score") to modules_to_save."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, TaskType

    task_type = TaskType[peft_task_type]
    if params.method == "lora":
        lora = params.lora
        return LoraConfig(
            task_type=task_type,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
    if params.method == "adalora":
        ada = params.adalora
        # Shares of the run -> steps; tinit + tfinal < 1 (checked in params) leaves at least one pruning step.
        tinit, tfinal = int(ada.tinit * total_steps), int(ada.tfinal * total_steps)
        return AdaLoraConfig(
            task_type=task_type,
            init_r=ada.init_r,
            target_r=ada.target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=ada.delta_t,
            total_step=total_steps,
            lora_alpha=ada.alpha,
            lora_dropout=ada.dropout,
            target_modules=ada.target_modules,
        )
    if params.method == "prefix":
        return PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=params.prefix.num_virtual_tokens,
            prefix_projection=params.prefix.projection,
        )
    if params.method == "ia3":
        return IA3Config(
            task_type=task_type,
            target_modules=params.ia3.target_modules,
            feedforward_modules=params.ia3.feedforward_modules,
        )
    raise ValueError(f"not a peft method: {params.method}")


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


def is_head_parameter(name: str, model: Any) -> bool:
    """Parameters of the task head: outside the pretrained encoder (peft keeps its trained copy of the
    head under `modules_to_save`)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return "modules_to_save" in name
    return not name.startswith(model.base_model_prefix + ".")


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; peft's own count, which does not count the head twice."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save(model: Any, out_dir: Path, pretrained_dir: Path, merge: bool) -> Any:
    """Save the trained model to `out_dir`; returns the model whose outputs the saved folder reproduces
    (the merged one when `merge`)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        model.save_pretrained(out_dir)
        return model
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir)
        return merged
    model.save_pretrained(out_dir)  # adapter weights + head (modules_to_save) + adapter_config.json
    model.get_base_model().config.save_pretrained(out_dir)  # label map and task of the head
    base = out_dir / BASE_DIR
    base.mkdir()
    for file in pretrained_dir.iterdir():  # the encoder's weights and config; tokenizer files live beside
        if file.is_file() and (
            file.suffix == ".safetensors" or file.name in ("config.json", "model.safetensors.index.json")
        ):
            shutil.copy2(file, base / file.name)
    return model


def load(model_dir: Path, auto_class: Any) -> Any:
    """A saved model folder as a model in eval mode: a plain transformers model, or base + adapter."""
    if not (model_dir / ADAPTER_CONFIG).is_file():
        return auto_class.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True).eval()
    from peft import PeftModel
    from transformers import AutoConfig

    # The head loaded here is random; the adapter's saved copy of the trained head replaces it.
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    base = auto_class.from_pretrained(
        model_dir / BASE_DIR, config=config, trust_remote_code=False, use_safetensors=True
    )
    prefix = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("peft_type") == "PREFIX_TUNING"
    if prefix and "past_key_values" not in inspect.signature(base.forward).parameters:
        _accept_past_key_values(base)
    return _prefix_generates(PeftModel.from_pretrained(base, model_dir).eval())


def folder_bytes(folder: Path, exclude: str | None = None) -> int:
    return sum(
        f.stat().st_size
        for f in folder.rglob("*")
        if f.is_file() and not (exclude and exclude in f.relative_to(folder).parts)
    )
