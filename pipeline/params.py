"""The one place where params.yaml is read and validated.

Every stage calls `load_params()` before doing any work, so a bad param stops the pipeline at its first
stage with one line naming the key. The sections and each key's description are the schema
(pipeline/schema.py); this module checks them against the task registry, flattens them for MLflow and
documents a key (`python -m pipeline.params --explain KEY`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import PipelineError, stage_main
from pipeline.methods.specs import METHOD_SPECS
from pipeline.schema import Params, PromptParams
from pipeline.tasks.registry import TASKS

PARAMS_FILE = Path(os.environ.get("PIPELINE_PARAMS", "params.yaml"))


def check_against_registries(params: Params) -> None:
    """What the schema alone cannot know: whether `task` and `finetune.method` are registered, and whether
    they can do what the other sections ask (data, metric, head, prompts, merging). Raises ValueError
    naming the key."""
    if params.task not in TASKS:
        raise ValueError(f"task: unknown task (one of {', '.join(TASKS)}) (got {params.task!r})")
    finetune = params.finetune
    if finetune.method not in METHOD_SPECS:
        raise ValueError(
            f"finetune.method: unknown method (one of {', '.join(METHOD_SPECS)}) (got {finetune.method!r})"
        )
    method = METHOD_SPECS[finetune.method]
    if finetune.merge_adapter and not method.mergeable:
        *others, last = [name for name, m in METHOD_SPECS.items() if m.mergeable]
        mergeable = f"{', '.join(others)} and {last}" if others else last
        raise ValueError(
            f"finetune: merge_adapter: only {mergeable} adapters can be merged (method is {finetune.method})"
        )
    if finetune.freeze_word_embeddings and not method.freezes_word_embeddings:
        raise ValueError(
            f"finetune: freeze_word_embeddings: for method full (method {finetune.method} has its own: "
            "freeze.train_embeddings, or adapters that leave the embeddings as they are)"
        )
    task = TASKS.for_task(params.task)
    task.check_params(params)  # what this task cannot do, each error naming its key
    if not task.pools_a_text and params.finetune.classifier_pooling == "mean":
        raise ValueError(f"finetune.classifier_pooling: task {params.task} has no head that reads a whole text")
    if not task.reads_prompts and params.tokenize.prompt != PromptParams():
        raise ValueError(
            f"tokenize.prompt: prompts are for decoder tasks (generative_classification, text_generation); "
            f"task {params.task} would ignore it"
        )
    responses_only = [key for key in ("input_column", "messages_column") if getattr(params.ingest, key)]
    if responses_only and not task.generates_text:
        raise ValueError(
            f"ingest.{responses_only[0]}: for text_generation (task {params.task} reads labels, not responses)"
        )
    if params.ingest.text_pair and params.tokenize.truncation != "head":
        raise ValueError(
            f"tokenize.truncation: text pairs are cut with head only, the longer text first "
            f"(got {params.tokenize.truncation!r})"
        )
    if params.model.random_init and not method.trains_every_weight:
        raise ValueError(
            f"model.random_init: a randomly initialised model trains with finetune.method full "
            f"(got {params.finetune.method!r}; the other methods keep pretrained weights frozen)"
        )
    metrics = (*task.validation_metrics_names, "loss")
    if params.finetune.metric_for_best_model not in metrics:
        raise ValueError(
            f"finetune.metric_for_best_model: {params.finetune.metric_for_best_model} is not a {params.task} "
            f"metric ({', '.join(metrics)})"
        )


def _format_error(path: Path, error: ValidationError) -> str:
    """Render pydantic's errors as one line: `params.yaml: key.sub: message (got value)`."""
    parts = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        elif err["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            # A check across sections names its keys in the message itself.
            parts.append(f"{key}: {msg}{shown}" if key else msg)
    return f"{path}: " + "; ".join(parts)


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate the params file; raise PipelineError with one line naming the bad key."""
    path = Path(path) if path is not None else PARAMS_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}:{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(_format_error(path, exc)) from None
    try:
        check_against_registries(params)
    except ValueError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    return params


def flat_params(params: Params, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Flatten params to dotted keys (`finetune.learning_rate`), for logging to MLflow."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = value

    dumped = params.model_dump()
    for name, value in dumped.items():
        if sections is None or name in sections:
            walk(name, value)
    return out


def field_at(key: str) -> tuple[Any, Any]:
    """(pydantic FieldInfo, annotation) of a dotted params key such as `finetune.lora.r`."""
    model: Any = Params
    info = None
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            raise PipelineError(f"{key}: no such params key")
        info = fields[part]
        model = next(
            (
                arg
                for arg in (info.annotation, *get_args(info.annotation))
                if isinstance(arg, type) and issubclass(arg, BaseModel)
            ),
            None,
        )
    return info, info.annotation


def explain(key: str) -> str:
    """A key's description, type, default and allowed values, as `--explain` prints them."""
    info, annotation = field_at(key)
    lines = [f"{key}: {info.description}", f"  type: {_type_name(annotation)}"]
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        lines.append(f"  default: {default.model_dump() if isinstance(default, BaseModel) else default!r}")
    else:
        lines.append("  default: none (required)")
    allowed = [a for arg in (annotation, *get_args(annotation)) if get_origin(arg) is Literal for a in get_args(arg)]
    if key == "task":
        lines.append("  allowed: " + "; ".join(f"{name} ({task.description})" for name, task in TASKS.items()))
    elif key == "finetune.method":
        lines.append("  allowed: " + "; ".join(f"{name} ({m.description})" for name, m in METHOD_SPECS.items()))
    elif allowed:
        lines.append("  allowed: " + ", ".join(map(str, allowed)))
    bounds = [
        f"{name} {getattr(m, name)}"
        for m in info.metadata
        for name in ("ge", "gt", "le", "lt", "min_length", "pattern")
        if getattr(m, name, None) is not None
    ]
    if bounds:
        lines.append("  constraints: " + ", ".join(bounds))
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return annotation.__name__ if isinstance(annotation, type) else text


@stage_main
def main() -> None:
    """`python -m pipeline.params` checks params.yaml without running anything; `--explain KEY` documents a key."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.params", description=main.__doc__)
    parser.add_argument(
        "--explain",
        metavar="KEY",
        help="print a key's description, type, default and allowed values (dotted: finetune.lora.r)",
    )
    args = parser.parse_args()
    if args.explain:
        print(explain(args.explain))
        return
    load_params()
    print(f"{PARAMS_FILE}: ok")


if __name__ == "__main__":
    main()
