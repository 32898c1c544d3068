"""The one place where params.yaml is read and validated.

Every stage calls `load_params()` before doing any work, so a bad param stops the pipeline at its first
stage with one line naming the key. Each section mirrors a block of params.yaml; the comments there
document every option.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.errors import PipelineError, stage_main

PARAMS_FILE = Path(os.environ.get("PIPELINE_PARAMS", "params.yaml"))

Fraction = Annotated[float, Field(gt=0, lt=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Section(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreToLabel(Section):
    """Map a numeric label column to classes: value <= thresholds[i] goes to names[i], above all to names[-1]."""

    thresholds: list[float] = Field(min_length=1)
    names: list[str]
    drop_values: list[float] = []

    @model_validator(mode="after")
    def _names_match_thresholds(self) -> ScoreToLabel:
        if len(self.names) != len(self.thresholds) + 1:
            raise ValueError(f"needs {len(self.thresholds) + 1} names for {len(self.thresholds)} thresholds")
        if self.thresholds != sorted(self.thresholds):
            raise ValueError("thresholds must be in increasing order")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names must be distinct")
        return self


class ConllParams(Section):
    """Column files (CoNLL): one token per line, whitespace-separated columns, blank line between sentences."""

    token_column: int = 0
    tag_column: int = -1
    repair_iob: bool = False  # turn an I- that starts an entity into B- instead of stopping with an error


SplitName = Literal["train", "validation", "test"]


class IngestParams(Section):
    source: str = Field(min_length=1)
    sha256: Sha256 | None = None
    format: Literal["tsv", "csv", "jsonl", "parquet", "text", "folder", "datasets", "conll"]
    splits: dict[SplitName, str] | None = None
    conll: ConllParams = ConllParams()
    header: bool = True
    column_names: list[str] | None = None
    text_column: str | list[str] = "text"  # a column, or two: a text pair (premise, hypothesis)
    label_column: str = "label"
    encoding: str = "utf-8"
    score_to_label: ScoreToLabel | None = None
    labels: list[str] | None = None
    label_delimiter: str | None = Field(default=None, min_length=1)


    @model_validator(mode="after")
    def _pair_is_two_columns(self) -> IngestParams:
        if isinstance(self.text_column, list) and (len(self.text_column) != 2 or len(set(self.text_column)) != 2):
            raise ValueError(f"text_column: a text pair is two different columns (got {self.text_column})")
        return self

    @property
    def text_pair(self) -> bool:
        return isinstance(self.text_column, list)


class SplitParams(Section):
    train: Fraction
    validation: Fraction
    test: Fraction
    overlap: Literal["error", "warn"] = "error"

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + validation + test must sum to 1 (got {total:g})")
        return self


class ModelParams(Section):
    source: str = Field(min_length=1)
    sha256: Sha256 | None = None
    random_init: bool = False  # the source's architecture with random weights: training from scratch


class TokenizeParams(Section):
    max_length: int = Field(ge=8, le=8192)
    truncation: Literal["head", "tail", "head+tail", "chunk"] = "head"
    stride: int = Field(default=0, ge=0)  # chunk: tokens shared by neighbouring windows
    pooling: Literal["mean", "max"] = "mean"  # chunk: a document's logits from its windows'
    context: Literal["none", "document"] = "none"  # token_classification: surround each sentence with its document's
    mark_case: bool = False  # token_classification: a marker after each capitalised word (for uncased encoders)

    @model_validator(mode="after")
    def _stride_fits(self) -> TokenizeParams:
        if self.stride >= self.max_length // 2:
            raise ValueError(f"stride must be below max_length / 2 (got stride {self.stride}, max_length {self.max_length})")
        return self


class FreezeParams(Section):
    """method freeze: the encoder is frozen and only the task head trains, unless these open more of it."""

    top_k_layers: int = Field(default=0, ge=0)  # the last k encoder layers train too
    train_embeddings: bool = False
    train_layer_norms: bool = False  # every LayerNorm of the encoder trains (a few thousand parameters)


class LoraParams(Section):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = None  # null: peft's default for the architecture (BERT: query, value)


class AdaLoraParams(Section):
    init_r: int = Field(default=12, ge=1)  # every adapted matrix starts with this rank ...
    target_r: int = Field(default=4, ge=1)  # ... and the budget is pruned to this average rank
    tinit: float = Field(default=0.1, ge=0, lt=1)  # share of steps before pruning starts
    tfinal: float = Field(default=0.3, ge=0, lt=1)  # share of steps at the end with the final ranks
    delta_t: int = Field(default=10, ge=1)  # steps between two budget reallocations
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = None

    @model_validator(mode="after")
    def _schedule_fits(self) -> AdaLoraParams:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r must not exceed init_r (got {self.target_r} > {self.init_r})")
        if self.tinit + self.tfinal >= 1:
            raise ValueError(f"tinit + tfinal must leave steps for pruning (got {self.tinit} + {self.tfinal})")
        return self


class PrefixParams(Section):
    num_virtual_tokens: int = Field(default=20, ge=1)
    projection: bool = False  # reparametrise the prefix through a two-layer MLP (more trainable parameters)


class Ia3Params(Section):
    target_modules: list[str] | None = None  # null: peft's default for the architecture
    feedforward_modules: list[str] | None = None  # which of them scale the input (feed-forward) instead of the output


class DropoutParams(Section):
    """Overrides of the pretrained config's dropout; null keeps the model's own value."""

    hidden: float | None = Field(default=None, ge=0, lt=1)
    attention: float | None = Field(default=None, ge=0, lt=1)
    classifier: float | None = Field(default=None, ge=0, lt=1)


Method = Literal["full", "freeze", "lora", "adalora", "prefix", "ia3"]
PEFT_METHODS = ("lora", "adalora", "prefix", "ia3")


class FinetuneParams(Section):
    method: Method = "full"
    freeze: FreezeParams = FreezeParams()
    lora: LoraParams = LoraParams()
    adalora: AdaLoraParams = AdaLoraParams()
    prefix: PrefixParams = PrefixParams()
    ia3: Ia3Params = Ia3Params()
    merge_adapter: bool = False  # lora/adalora/ia3: fold the adapter into the weights of the saved model
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    learning_rate: float = Field(gt=0, le=1)
    head_learning_rate: float | None = Field(default=None, gt=0, le=1)  # null: learning_rate
    num_train_epochs: float = Field(gt=0)
    max_steps: int = Field(default=-1, ge=-1)
    per_device_train_batch_size: int = Field(ge=1)
    per_device_eval_batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(default=1.0, gt=0)
    dropout: DropoutParams = DropoutParams()
    class_weights: Literal["auto"] | list[Annotated[float, Field(gt=0)]] | None = None
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    eval_steps: int | None = Field(default=None, ge=1)  # evaluate and checkpoint every N steps; null: every epoch
    metric_for_best_model: Literal["accuracy", "macro_f1", "micro_f1", "subset_accuracy", "f1", "loss"] = "accuracy"
    early_stopping_mode: Literal["auto", "max", "min"] = "auto"  # auto: min for loss, max for the others
    threshold: float = Field(default=0.5, gt=0, lt=1)  # multi-label: a label is predicted when its probability reaches this
    tune_thresholds: bool = False  # multi-label: one threshold per label, the one with the best validation F1
    early_stopping_patience: int | None = Field(ge=1)  # null: no early stopping
    early_stopping_threshold: float = Field(default=0.0, ge=0)
    logging_steps: int = Field(ge=1)
    group_by_length: bool = True
    resume: bool = True  # an interrupted finetune continues from its last checkpoint (same MLflow run)
    on_bad_checkpoint: Literal["error", "restart"] = "error"  # checkpoints of other params/data/model, or unreadable

    @model_validator(mode="after")
    def _method_options_fit(self) -> FinetuneParams:
        if self.merge_adapter and self.method not in ("lora", "adalora", "ia3"):
            raise ValueError(f"merge_adapter: only lora, adalora and ia3 adapters can be merged (method is {self.method})")
        return self

    @property
    def greater_is_better(self) -> bool:
        if self.early_stopping_mode == "auto":
            return self.metric_for_best_model != "loss"
        return self.early_stopping_mode == "max"


class EvaluateParams(Section):
    registered_model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    alias: str = Field(default="challenger", pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")


class PromoteParams(Section):
    metric: str = Field(default="accuracy", pattern=r"^[a-z_0-9]+$")
    min_improvement: float = 0.0
    floor: float = Field(default=0.0, ge=0, le=1)


class BaselineParams(Section):
    max_features: int = Field(ge=1)
    ngram_max: int = Field(ge=1, le=5)
    C: float = Field(gt=0)


class ReportParams(Section):
    title: str
    baseline: BaselineParams


class MlflowParams(Section):
    experiment_name: str = Field(min_length=1)


class Params(Section):
    seed: int = Field(ge=0)
    task: Literal["single_label_classification", "multi_label_classification", "token_classification"]
    mlflow: MlflowParams
    ingest: IngestParams
    split: SplitParams
    model: ModelParams
    tokenize: TokenizeParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    promote: PromoteParams
    report: ReportParams

    @model_validator(mode="after")
    def _task_fits_data_and_metric(self) -> Params:
        token_task = self.task == "token_classification"
        if token_task != (self.ingest.format == "conll"):
            raise ValueError(f"ingest.format: task {self.task} needs {'conll' if token_task else 'a text format, not conll'} "
                             f"(got {self.ingest.format!r})")
        if self.ingest.text_pair and self.tokenize.truncation != "head":
            raise ValueError(f"tokenize.truncation: text pairs are cut with head only, the longer text first "
                             f"(got {self.tokenize.truncation!r})")
        if not token_task and self.tokenize.context != "none":
            raise ValueError(f"tokenize.context: document context is for token_classification (task is {self.task})")
        if not token_task and self.tokenize.mark_case:
            raise ValueError(f"tokenize.mark_case: case markers are for token_classification (task is {self.task})")
        if token_task and self.tokenize.truncation != "head":
            raise ValueError(f"tokenize.truncation: token_classification supports head only (got {self.tokenize.truncation!r})")
        metrics = {"token_classification": ("f1", "accuracy", "loss"),
                   "multi_label_classification": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
                   "single_label_classification": ("accuracy", "macro_f1", "loss")}[self.task]
        if self.model.random_init and self.finetune.method != "full":
            raise ValueError(f"model.random_init: a randomly initialised model trains with finetune.method full "
                             f"(got {self.finetune.method!r}; the other methods keep pretrained weights frozen)")
        if self.finetune.metric_for_best_model not in metrics:
            raise ValueError(f"finetune.metric_for_best_model: {self.finetune.metric_for_best_model} is not a {self.task} "
                             f"metric ({', '.join(metrics)})")
        return self


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
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(_format_error(path, exc)) from None


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


@stage_main
def main() -> None:
    """`python -m stages.params` checks params.yaml without running anything."""
    load_params()
    print(f"{PARAMS_FILE}: ok")


if __name__ == "__main__":
    main()
