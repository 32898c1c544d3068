"""The fine-tuning method interface (`finetune.method`): which parameters train, what the Trainer must do
for them, and how the trained model is saved; and what every method shares: loading a saved model folder,
counting parameters, finding the task head.

A method is one class on `Method` (plain.py: full, freeze; adapters.py: the peft adapters) and one entry in
registry.py. Nothing outside this package asks which method it is: it asks the method.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.methods.specs import MethodSpec
from pipeline.schema import FinetuneParams

BASE_DIR = "base"  # inside an adapter model folder: the pretrained encoder the adapter applies to
ADAPTER_CONFIG = "adapter_config.json"


class Method(MethodSpec, ABC):
    """One way to fine-tune: what trains, the callbacks it needs, its checkpoint contract, how it saves (its
    name, params section and abilities are its spec's, pipeline/methods/specs.py)."""

    @abstractmethod
    def prepare(self, model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
        """The model ready to train: parameters frozen, or wrapped by an adapter."""

    def callbacks(self, model: Any) -> list[TrainerCallback]:
        """Trainer callbacks the method needs besides the pipeline's own."""
        return []

    def save(self, model: Any, out_dir: Path, pretrained_dir: Path, merge: bool) -> Any:
        """Save the trained model to `out_dir`; returns the model whose outputs the saved folder reproduces."""
        model.save_pretrained(out_dir)
        return model


def load_model(model_dir: Path, auto_class: Any) -> Any:
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
        accept_past_key_values(base)
    return prefix_generates(PeftModel.from_pretrained(base, model_dir).eval())


def folder_bytes(folder: Path, exclude: str | None = None) -> int:
    return sum(
        f.stat().st_size
        for f in folder.rglob("*")
        if f.is_file() and not (exclude and exclude in f.relative_to(folder).parts)
    )


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


def accept_past_key_values(model: Any) -> None:
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


def prefix_generates(model: Any) -> Any:
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
