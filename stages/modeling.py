"""Loading the pretrained model and its tokenizer from the source named in params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from stages.errors import PipelineError
from stages.params import ModelParams
from stages.sources import resolve
from stages.tasks import get_task


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


def load_for_training(model_dir: Path, task_name: str, labels: list[str]) -> Any:
    """The pretrained encoder with a freshly initialised head for `labels`."""
    task = get_task(task_name)
    try:
        return task.auto_model_class().from_pretrained(
            model_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=task.problem_type,
        )
    except (OSError, ValueError, SafetensorError) as exc:  # missing, incompatible or corrupt weights
        raise PipelineError(f"{model_dir}: cannot load model: {str(exc).splitlines()[0]}") from None
