"""Loading the pretrained model and its tokenizer from the source named in params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from pipeline.errors import PipelineError
from pipeline.params import DropoutParams, ModelParams
from pipeline.sources import resolve
from pipeline.tasks import Task


def _quiet_loading() -> None:
    """transformers draws progress bars for loading and writing weights: noise in `dvc repro` logs, and
    it would put lines before a stage's one-line error."""
    from transformers.utils import logging

    logging.disable_progress_bar()


_quiet_loading()


def resolve_model(params: ModelParams) -> Path:
    path = resolve(params.source, params.sha256, key="model.source")
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path}: no config.json; model.source must name a transformers model folder")
    return path


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
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


def load_for_training(
    model_dir: Path, task: Task, labels: list[str], dropout: DropoutParams | None = None, random_init: bool = False
) -> Any:
    """The pretrained encoder with a freshly initialised head for `labels` and the dropout overrides;
    with `random_init`, the same architecture with every weight random (training from scratch)."""
    from transformers import AutoConfig

    overrides = {}
    if dropout is not None:
        config = AutoConfig.from_pretrained(model_dir)
        for key, value in dropout.model_dump(exclude_none=True).items():
            attribute = DROPOUT_ATTRIBUTES[key]
            if not hasattr(config, attribute):
                raise PipelineError(f"finetune.dropout.{key}: the {config.model_type} config has no {attribute}")
            overrides[attribute] = value
    head = dict(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=task.problem_type,
        **overrides,
    )
    try:
        if random_init:
            return task.auto_model_class().from_config(AutoConfig.from_pretrained(model_dir, **head))
        return task.auto_model_class().from_pretrained(model_dir, **head)
    except (OSError, ValueError, SafetensorError) as exc:  # missing, incompatible or corrupt weights
        raise PipelineError(f"{model_dir}: cannot load model: {str(exc).splitlines()[0]}") from None
