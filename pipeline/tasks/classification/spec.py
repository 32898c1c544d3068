"""Sequence classification's names, metrics and params: a label (or a set of labels) per text or text pair.

`TextClassificationSpec` holds what both share; single-label and multi-label differ in targets, loss,
decoding and metrics (the role modules beside this one).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from pipeline import data
from pipeline.tasks.base import TaskSpec

if TYPE_CHECKING:
    from pipeline.schema import Params


class TextClassificationSpec(TaskSpec):
    """What every text (or text-pair) classification task shares."""

    peft_task_type: ClassVar[str] = "SEQ_CLS"
    pools_a_text: ClassVar[bool] = True
    baseline_name: ClassVar[str] = "TF-IDF + logistic regression"
    example_unit: ClassVar[str] = "texts"
    error_examples_note: ClassVar[str] = (
        "Per class, the most confident wrong predictions and the least confident right ones (score: the "
        "probability given to the predicted label, or to the label for label sets)."
    )
    # Does every text need a label? (A multi-label text may have none: the empty set.)
    label_required: ClassVar[bool] = True

    def check_params(self, params: Params) -> None:
        if params.ingest.format == "conll":
            raise ValueError(f"ingest.format: task {self.name} needs a text format, not conll")
        if params.tokenize.context != "none":
            raise ValueError(f"tokenize.context: document context is for token_classification (task is {self.name})")
        if params.tokenize.mark_case:
            raise ValueError(f"tokenize.mark_case: case markers are for token_classification (task is {self.name})")

    @abstractmethod
    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The training target of each row (tokenize encodes it; prediction compares with it)."""


class SingleLabelSpec(TextClassificationSpec):
    """Binary or multi-class classification: one label per text, cross-entropy loss."""

    name: ClassVar[str] = "single_label_classification"
    description: ClassVar[str] = "binary or multi-class: one label per text (or text pair)"
    problem_type: ClassVar[str] = "single_label_classification"
    headline_metric: ClassVar[str] = "accuracy"
    summary_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1")

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The class id of each row."""
        index = {label: i for i, label in enumerate(labels)}
        return table[data.LABEL].astype(str).map(index).tolist()


class MultiLabelSpec(TextClassificationSpec):
    """0..n labels per text: one sigmoid per label, binary cross-entropy loss, a decision threshold per
    label (one global value, or tuned on the validation set: `finetune.tune_thresholds`)."""

    name: ClassVar[str] = "multi_label_classification"
    description: ClassVar[str] = "0..n labels per text (a list column or a delimited string)"
    problem_type: ClassVar[str] = "multi_label_classification"  # transformers then uses BCEWithLogitsLoss
    headline_metric: ClassVar[str] = "micro_f1"
    summary_metrics: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "subset_accuracy")
    confusion_none: ClassVar[str | None] = "none"  # a label only one side has is paired with "none"
    label_required: ClassVar[bool] = False

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """A multi-hot vector of floats per row (what BCE loss expects)."""
        return [[1.0 if label in set(row) else 0.0 for label in labels] for row in table[data.LABEL]]
