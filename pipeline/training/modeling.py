"""Loading the pretrained model and its tokenizer from the source named in params."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from pipeline.data.sources import cache_dir, resolve, sha256_of
from pipeline.errors import PipelineError, atomic_dir
from pipeline.schema import DropoutParams, ModelParams
from pipeline.tasks.base import TrainingHooks


def _quiet_loading() -> None:
    """transformers draws progress bars for loading and writing weights: noise in `dvc repro` logs, and
    it would put lines before a stage's one-line error."""
    from transformers.utils import logging

    logging.disable_progress_bar()


_quiet_loading()


def resolve_model(params: ModelParams) -> Path:
    """The pretrained model as a transformers folder; a GGUF file becomes one (dequantised, cached)."""
    path = resolve(params.source, params.sha256, key="model.source")
    if path.is_file() and path.suffix == ".gguf":
        path = dequantised_gguf(path)
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path}: no config.json; model.source must name a transformers model folder")
    check_model_folder(path)
    return path


def dequantised_gguf(file: Path) -> Path:
    """A GGUF decoder (llama.cpp's format) as a plain transformers folder with fp32 safetensors, made once
    per file and cached by its sha256. transformers dequantises GGUF on loading (with the `gguf` package)
    but keeps a GGUF quantizer on the model, with which save_pretrained and the Trainer refuse it; once
    the quantizer is dropped, it is an ordinary model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gguf" / sha256_of(file)[:32]
    if (target / "config.json").is_file():
        return target
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype="float32", trust_remote_code=False
        )
    # Not GGUF, an architecture transformers cannot read, or a cut file (its reader's struct.unpack_from fails)
    except (OSError, ValueError, RuntimeError, KeyError, struct.error) as exc:
        raise PipelineError(f"{file}: cannot load as a GGUF model: {str(exc).splitlines()[0]}") from None
    model.hf_quantizer = None
    del model.config.quantization_config
    with atomic_dir(target) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return target


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_folder(folder: Path) -> None:
    """Refuse, with one line, a folder whose loading would run code from it: an `auto_map` (custom model
    or tokenizer classes; transformers would ask on stdin whether to run them) or pickle weights without a
    safetensors copy (unpickling can run code). Every loader also passes trust_remote_code=False."""
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PipelineError(f"{file}: not valid JSON") from None
        if isinstance(config, dict) and "auto_map" in config:
            raise PipelineError(
                f"{file}: the model brings its own Python code (auto_map); refused: the pipeline never runs code "
                "from a model folder"
            )
    if not any(folder.glob("*.safetensors")) and any(f for pattern in PICKLE_WEIGHTS for f in folder.glob(pattern)):
        raise PipelineError(
            f"{folder}: weights in pickle format (e.g. pytorch_model.bin) are refused, unpickling can run code; "
            "convert once where you trust the file: AutoModel.from_pretrained(DIR).save_pretrained(DIR) writes "
            "model.safetensors"
        )


# Models whose position ids start after the padding index, so two positions are never a token's.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def require_fits_positions(model_dir: Path, max_length: int, pad_to_multiple_of: int | None = None) -> None:
    """`tokenize.max_length`, and the longest batch once padded to a multiple of `finetune.pad_to_multiple_of`,
    must fit the model's position embeddings; past them training crashes at the first long batch, possibly far
    into a run."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return  # relative or rotary positions: no fixed limit in the config
    limit = positions - POSITION_OFFSET.get(config.get("model_type", ""), 0)
    what = f"the {limit} positions of the model ({model_dir.name}, {config.get('model_type', 'unknown type')})"
    if max_length > limit:
        raise PipelineError(f"tokenize.max_length: {max_length} exceeds {what}")
    padded = -(-max_length // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else max_length
    if padded > limit:
        raise PipelineError(
            f"finetune.pad_to_multiple_of: {pad_to_multiple_of} pads batches of tokenize.max_length {max_length} "
            f"to {padded} tokens, past {what}"
        )


def require_finite_weights(model: Any, what: str) -> None:
    """No model with a NaN or infinite weight is saved, registered or served."""
    import torch

    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            bad = int((~torch.isfinite(parameter)).sum())
            raise PipelineError(f"{what} has {bad} non-finite values in {name}; refused")


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{model_dir}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        # Fast tokenizers give word ids and offsets, which token classification and chunking rely on.
        raise PipelineError(f"{model_dir}: no fast tokenizer (tokenizer.json) in the model folder")
    return tokenizer


# `finetune.dropout` keys -> the config attribute each sets (BERT-family names; DistilBERT's differ).
DROPOUT_ATTRIBUTES = {
    "hidden": "hidden_dropout_prob",
    "attention": "attention_probs_dropout_prob",
    "classifier": "classifier_dropout",
}


def head_pooling(setting: str, model_dir: Path) -> str:
    """`finetune.classifier_pooling` for the encoder in `model_dir`: auto is the pooling it was pretrained
    with where its folder states it (sentence-transformers' Pooling module: mean, or cls), else cls. Read by
    hand: sentence-transformers is not a dependency, and its folder format is two small JSON files."""
    if setting != "auto":
        return setting
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        pooling = next(m for m in modules if m.get("type", "").endswith(".Pooling"))
        modes = json.loads((model_dir / pooling["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return "cls"  # no sentence-transformers folder (or none that states a pooling): transformers' default
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls"


def load_for_training(
    model_dir: Path,
    task: TrainingHooks,
    labels: list[str],
    dropout: DropoutParams | None = None,
    random_init: bool = False,
    classifier_pooling: str = "cls",
) -> Any:
    """The pretrained encoder with a freshly initialised head for `labels`, the dropout overrides and the
    head's pooling (`classifier_pooling`, saved in the config); with `random_init`, the same architecture
    with every weight random (training from scratch)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False, **task.head_config(labels))
    except (OSError, ValueError) as exc:  # an unknown model_type, a broken config
        raise PipelineError(f"{model_dir}: cannot load config: {str(exc).splitlines()[0]}") from None
    for key, value in (dropout.model_dump(exclude_none=True) if dropout else {}).items():
        attribute = DROPOUT_ATTRIBUTES[key]
        if not hasattr(config, attribute):
            raise PipelineError(f"finetune.dropout.{key}: the {config.model_type} config has no {attribute}")
        setattr(config, attribute, value)
    pooling = head_pooling(classifier_pooling, model_dir) if task.pools_a_text else "cls"
    if pooling != "cls":  # only then: configs that have the key (ModernBERT's) keep their own default
        config.classifier_pooling = pooling
    try:
        if random_init:
            return task.auto_model_class().from_config(config, trust_remote_code=False)
        return task.auto_model_class().from_pretrained(
            model_dir, config=config, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError, SafetensorError) as exc:  # missing, incompatible or corrupt weights
        raise PipelineError(f"{model_dir}: cannot load model: {str(exc).splitlines()[0]}") from None
