"""The model card: the one typed record a fine-tuned model folder carries (`training.json`).

It says what a Predictor needs to use the folder (task, labels, how texts become inputs, decision
thresholds), where the model came from (MLflow run, commit, data and params hashes) and what training
cost. `ModelCard.write(folder)` and `ModelCard.read(folder)` are the only code that touches the file.

Schema versions: 0 is the flat dict written before the card existed (it still loads, upgraded on read);
1 is this layout. A folder written by newer code is refused with one line rather than misread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import PipelineError
from pipeline.schema import PromptParams

CARD_FILE = "training.json"
SCHEMA_VERSION = 1


class Record(BaseModel):
    # Frozen: a card describes a saved folder and is never edited in place. Unknown fields are an error, so a
    # misspelt writer or a newer schema does not pass silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncodingSpec(Record):
    """How texts become model inputs; the Predictor applies exactly what training used (the `tokenize`
    params, and whether the model reads text pairs)."""

    max_length: int = Field(ge=1)
    truncation: Literal["head", "tail", "head+tail", "chunk"] = "head"
    stride: int = Field(default=0, ge=0)
    pooling: Literal["mean", "max"] = "mean"
    context: Literal["none", "document"] = "none"
    mark_case: bool = False
    text_pair: bool = False
    max_chars: int | None = None  # tokenize.max_chars (cards written before it have none: no cut)
    prompt: PromptParams | None = None  # decoder tasks: the prompt template and label words (tokenize.prompt)


class Provenance(Record):
    """Where the model came from; absent for models trained outside the finetune stage (benchmarks)."""

    mlflow_run_id: str
    git_commit: str
    git_dirty: str  # "true" | "false", as the MLflow tags have it
    data_sha256: str
    params_sha256: str


class TrainingStats(Record):
    """What one training run reached and cost."""

    global_step: int
    best_checkpoint_step: int | None
    best_metric_name: str  # the validation metric early stopping watched (finetune.metric_for_best_model)
    best_metric: float | None
    resumed_from_step: int | None = None
    train_seconds: float
    train_samples_per_second: float | None
    processes: int = 1  # data-parallel training processes (finetune.distributed)
    global_train_batch_size: int | None = None  # examples per optimizer step over all processes
    trainable_params: int
    total_params: int
    peak_rss_mib: float  # the process's peak resident memory (training dominates it)
    peak_gpu_mib: float | None  # the most GPU memory torch held at once; None without a GPU
    artifact_bytes: int  # the saved model folder
    trained_bytes: int  # what the run adds to the pretrained model: the folder less the base copy


class ModelCard(Record):
    schema_version: int = SCHEMA_VERSION
    task: str
    labels: list[str] = Field(default_factory=list)  # output labels in id order; none for text generation
    encoding: EncodingSpec
    thresholds: list[float] | None = None  # per-label decision thresholds (multi-label)
    temperature: float = Field(default=1.0, gt=0)  # logits are divided by it before softmax/sigmoid (calibration)
    method: str = "full"  # finetune.method
    merged_adapter: bool = False
    base_model: str | None = None  # model.source
    train_examples: int | None = None
    provenance: Provenance | None = None
    training: TrainingStats | None = None

    def write(self, folder: Path) -> Path:
        path = Path(folder) / CARD_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        """The card of a model folder; one-line PipelineError for a folder that is not a model, a card from
        newer code, or a card that misses a required field."""
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            raise PipelineError(f"{folder}: not a fine-tuned model folder (no {CARD_FILE})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PipelineError(f"{path}: unreadable model card ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise PipelineError(f"{path}: not a model card (expected a JSON object)")
        version = raw.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise PipelineError(
                f"{path}: model card schema version {version!r} is newer than this code reads "
                f"({SCHEMA_VERSION}); upgrade the pipeline to load this model"
            )
        if version == 0:
            raw = _upgrade_from_flat(raw)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            problem = "required field is missing" if first["type"] == "missing" else first["msg"]
            raise PipelineError(f"{path}: {key}: {problem}") from None


def _upgrade_from_flat(raw: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (before 2026-11-30): one flat dict, optional keys missing in older folders, the best
    validation value under `best_validation_<metric>`."""
    flat = dict(raw)
    card: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    card["encoding"] = {k: flat.pop(k) for k in list(EncodingSpec.model_fields) if k in flat}
    if all(k in flat for k in Provenance.model_fields):
        card["provenance"] = {k: flat.pop(k) for k in Provenance.model_fields}
    best = next((k for k in flat if k.startswith("best_validation_")), None)
    if best is not None and "global_step" in flat:
        stats = {k: flat.pop(k) for k in list(TrainingStats.model_fields) if k in flat}
        card["training"] = {
            **stats,
            "best_metric_name": best.removeprefix("best_validation_"),
            "best_metric": flat.pop(best),
        }
    for key in ("task", "labels", "thresholds", "method", "merged_adapter", "base_model", "train_examples"):
        if key in flat:
            card[key] = flat.pop(key)
    return card  # anything else the old dict held (it had nothing else the Predictor read) is dropped
