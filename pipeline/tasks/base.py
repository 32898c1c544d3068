"""The Task interface, split by the stages that use it, so each stage imports only the code it runs.

A task (`task` in params.yaml) is one `TaskSpec` (its names and metrics, what params it accepts) and one
class per role, each a subclass of the spec and of the role's interface below:

| role           | interface        | used by                                    | registry                    |
|----------------|------------------|--------------------------------------------|-----------------------------|
| spec           | `TaskSpec`       | params validation, every stage, the report | pipeline/tasks/registry.py  |
| reading rows   | `Reader`         | ingest, split                              | pipeline/tasks/reading.py   |
| encoding       | `Encoder`        | tokenize                                   | pipeline/tasks/encoding.py  |
| head and loss  | `TrainingHooks`  | finetune, and loading a saved model        | pipeline/tasks/training.py  |
| prediction     | `Prediction`     | the Predictor: export, evaluate, serving   | pipeline/tasks/prediction.py|
| scoring        | `Scoring`        | evaluate, promote                          | pipeline/tasks/scoring.py   |

A change to a task's scoring code then re-runs evaluate, never ingest or finetune (dvc.yaml lists each
stage's imports; tests/unit/test_architecture.py checks them).

Adding a task means one package beside classification/, tokens/ and generation/ with a module per role,
and one entry in each registry. The name then becomes a valid `task` in params.yaml, and every stage,
`promote`, `predict` and the served model work with it; nothing outside the package compares task names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

    from pipeline.card import ModelCard
    from pipeline.schema import (
        BaselineParams,
        FinetuneParams,
        IngestParams,
        Params,
        PromptingParams,
        TokenizeParams,
    )


class TaskSpec:
    """What every stage may know of a task: its names, metrics and the params it accepts."""

    name: ClassVar[str]  # the value of `task` in params.yaml
    description: ClassVar[str]  # one line, shown by `python -m pipeline.params --explain task`
    problem_type: ClassVar[str]  # transformers' config.problem_type: it picks the model's own loss
    peft_task_type: ClassVar[str]  # peft's TaskType name: peft then trains and saves the task head
    headline_metric: ClassVar[str]  # the one test number quoted first in logs, the registry and the report
    summary_metrics: ClassVar[tuple[str, ...]]  # the report's and the registry's table columns
    validation_metrics_names: ClassVar[tuple[str, ...]]  # what `finetune.metric_for_best_model` may name (and loss)
    baseline_name: ClassVar[str]  # the classical model the report compares with
    example_unit: ClassVar[str]  # what one test example is ("texts", "sentences"): what intervals resample
    confusion_none: ClassVar[str | None] = None  # the confusion axis' entry for "nothing there", if the task has one
    error_examples_note: ClassVar[str] = ""  # what the rows of `error_examples` are, for the report
    reads_prompts: ClassVar[bool] = False  # a decoder task: the model card keeps `tokenize.prompt`
    generates_text: ClassVar[bool] = False  # free-text answers: reads instruction/input columns and chats, samples
    pools_a_text: ClassVar[bool] = False  # the head reads one vector per text (finetune.classifier_pooling)
    not_exportable: ClassVar[str | None] = None  # why the export stage cannot make ONNX graphs of this task's models
    # The model's own loss divides by the Trainer's item count over the whole accumulated (and, under DDP,
    # all-process) batch, as causal LMs' losses do. Encoder heads average over their own micro-batch
    # instead, so the Trainer must scale it for accumulation and DDP itself; it would not (their forward
    # takes **kwargs, which it reads as "counts items") and would sum micro-batches' gradients.
    model_loss_counts_items: ClassVar[bool] = False

    def check_params(self, params: Params) -> None:  # noqa: B027 (a hook: most tasks accept every combination)
        """Called when params.yaml is validated: raise ValueError naming the key when params ask for
        something this task cannot do."""

    def check_model(self, model_config: dict[str, Any], source: str) -> None:  # noqa: B027 (a hook, as above)
        """Called where a stage first resolves model.source (tokenize): raise PipelineError naming
        model.source when the model (its config.json) cannot do this task."""

    def confusion_axis(self, classes: list[str]) -> list[str]:
        """The rows and columns of the confusion matrix the report draws."""
        return classes + ([self.confusion_none] if self.confusion_none else [])


@dataclass
class Outcomes:
    """A model's results on the examples of a split: what metrics are computed from."""

    true: list[Any]  # one entry per example: a label, a label set, a sentence's tags
    pred: list[Any]
    logits: np.ndarray | None = None  # (examples, labels), raw; tasks that score whole examples only
    targets: np.ndarray | None = None  # (examples, labels) indicator of the true labels, beside logits
    measured: dict[str, float] = field(default_factory=dict)  # what else the task measured on the way (test metrics)


class Reader(TaskSpec, ABC):
    """Ingest and split: raw files to the normalised table, its label order and its strata."""

    @abstractmethod
    def read(self, path: Any, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
        """One source file in the normalised form: the table, how many records were read, and the counts of
        what was dropped or repaired and why (for the data card)."""

    @abstractmethod
    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        """The label-id order of the model's outputs."""

    def finalise(self, table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        """The ingested table once the label order is known (e.g. labels as a Categorical in that order)."""
        return table

    @abstractmethod
    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        """Rows, label counts and length statistics for the data and split cards."""

    @abstractmethod
    def strata(self, table: pd.DataFrame) -> pd.Series:
        """What a re-split stratifies on, one value per row."""


class Encoder(TaskSpec, ABC):
    """Tokenize: a split table to the model's inputs and targets."""

    @abstractmethod
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """A datasets.Dataset with input_ids, attention_mask, labels and length (not padded)."""

    @abstractmethod
    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        """How many examples lost part of their input to max_length (the tokenize stage reports it)."""


class TrainingHooks(TaskSpec, ABC):
    """Finetune: the model class with this task's head, its batches, loss and validation metrics; and what
    the trained model keeps for prediction (temperature, thresholds)."""

    @abstractmethod
    def auto_model_class(self) -> Any:
        """The transformers Auto class of the model with this task's head (also what loads a saved model)."""

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """Config overrides that give the pretrained model this task's head for `labels`."""
        return dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=self.problem_type,
        )

    @abstractmethod
    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        """Pads a batch to its longest member, rounded up to `pad_to_multiple_of` tokens (labels included where
        they are sequences)."""

    def metric_logits(
        self, tokenizer: Any, labels: list[str], params: TokenizeParams
    ) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
        """The Trainer's `preprocess_logits_for_metrics`: what of each evaluation batch's outputs is kept for
        the validation metrics; None keeps the logits as they are."""
        return None

    def metric_arrays(self, predictions: Any, label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, label ids) of an evaluation or prediction pass of the Trainer, as validation_metrics,
        fit_temperature and decision_thresholds read them."""
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        return np.asarray(logits), np.asarray(label_ids)

    @abstractmethod
    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        """The metrics the Trainer computes at each evaluation (early stopping picks one of them)."""

    @abstractmethod
    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        """`finetune.class_weights: auto`: one weight per label from the train split's targets."""

    @abstractmethod
    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        """(summed loss, number of items it sums over) with class weights and label smoothing."""

    def decision_thresholds(
        self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]], params: FinetuneParams, n_labels: int
    ) -> list[float] | None:
        """Per-label decision thresholds stored with the model; None when the task decides by argmax.
        `validation_outputs()` runs the trained model on the validation split: (logits, label ids)."""
        return None

    def fit_temperature(self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]]) -> float:
        """The temperature that calibrates this task's scores on the validation outputs (logits, label ids);
        1.0, none, by default (token tasks)."""
        return 1.0


class Prediction(TaskSpec, ABC):
    """The Predictor's answers (evaluate, serving, batch prediction) and a split's outcomes."""

    @abstractmethod
    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """One row per input text: what the served model and `predict` return."""

    @abstractmethod
    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        """True and predicted of each example of a split table, the unit metrics are computed over and
        bootstrap intervals resample (a text, a text pair, a sentence); with the logits where the task
        scores whole examples (curves and calibration use them)."""


class Scoring(TaskSpec, ABC):
    """Evaluate and promote: test metrics, the classical and prompting baselines, errors worth reading."""

    @abstractmethod
    def test_metrics(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, Any]:
        """The summary metrics and `per_class` precision/recall/F1/support."""

    def summary_scores(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, float]:
        """Only the summary metrics (what intervals and paired tests need, many times over)."""
        metrics = self.test_metrics(true, pred, labels)
        return {name: metrics[name] for name in self.summary_metrics}

    @abstractmethod
    def confusion_pairs(self, true: list[Any], pred: list[Any]) -> pd.DataFrame:
        """(actual, predicted) rows of the confusion plot."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Scores from logits (softmax, or sigmoid for label sets); tasks without example logits never call it."""
        raise NotImplementedError(f"{self.name} has no example-level probabilities")

    def reliability_points(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, correct) pairs a reliability diagram and the calibration error are computed from."""
        raise NotImplementedError(f"{self.name} has no example-level probabilities")

    def error_examples(
        self, texts: list[str], result: Outcomes, probabilities: np.ndarray | None, labels: list[str], k: int
    ) -> pd.DataFrame:
        """The errors worth reading (kind, class, text, gold, predicted, score), as `error_examples_note`
        describes them; empty by default."""
        return pd.DataFrame(columns=["kind", "class", "text", "gold", "predicted", "score"])

    @abstractmethod
    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        """(true, predicted) on the test split of a classical model fitted on the train split
        (`baseline_name`): the reference a fine-tuned model must beat."""

    def prompting_baselines(
        self,
        pretrained: Callable[[], Path],
        card: ModelCard,
        train: pd.DataFrame,
        test: pd.DataFrame,
        params: PromptingParams,
    ) -> dict[str, dict[str, Any]]:
        """Decoder tasks: the untuned pretrained model (`pretrained()` resolves its folder) prompted
        zero-shot and few-shot on the test split, each with its summary metrics and cost; none for encoders
        (their head starts random)."""
        return {}


Role = TypeVar("Role", bound=TaskSpec)


class Registry(dict[str, Role]):
    """One role of every task, by the task's name (`task` in params.yaml)."""

    def __init__(self, *roles: Role) -> None:
        super().__init__((role.name, role) for role in roles)

    def for_task(self, name: str) -> Role:
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown task {name!r} (one of {', '.join(self)})") from None
