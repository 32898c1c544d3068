"""Named-entity recognition's names, metrics and params: one IOB2 tag per word; entity-level metrics with
seqeval (strict IOB2).

Words are split into sub-word tokens; only the first token of a word carries its tag, the rest are ignored
in the loss and in decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pipeline.tasks.base import TaskSpec

if TYPE_CHECKING:
    from pipeline.schema import Params


class TokenClassificationSpec(TaskSpec):
    """One IOB2 tag per word of a sentence (NER); CoNLL column files in, entity spans out."""

    name: ClassVar[str] = "token_classification"
    description: ClassVar[str] = "NER: one IOB2 tag per word; needs ingest.format conll"
    problem_type: ClassVar[str] = "token_classification"
    peft_task_type: ClassVar[str] = "TOKEN_CLS"
    headline_metric: ClassVar[str] = "f1"  # entity-level micro F1
    summary_metrics: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "macro_f1", "accuracy")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("f1", "accuracy")
    baseline_name: ClassVar[str] = "word-feature logistic regression"
    example_unit: ClassVar[str] = "sentences"
    confusion_none: ClassVar[str | None] = "O"  # a span only one side found is paired with "O"
    error_examples_note: ClassVar[str] = (
        "The most frequent confusions of entity types (O: a span only one side found, so a boundary error is "
        "an O row and a row to O), with up to two example sentences each, the span in [[ ]]; score: how many "
        "times the confusion occurs in the test split."
    )

    def check_params(self, params: Params) -> None:
        if params.ingest.format != "conll":
            raise ValueError(f"ingest.format: task {self.name} needs conll (got {params.ingest.format!r})")
        if params.ingest.slice_column is not None:
            raise ValueError(f"ingest.slice_column: CoNLL files have no columns to slice by (task {self.name})")
        if params.tokenize.max_chars is not None:
            raise ValueError(f"tokenize.max_chars: for text classification; {self.name} reads words (null)")
        if params.tokenize.truncation != "head":
            raise ValueError(
                f"tokenize.truncation: {self.name} supports head only (got {params.tokenize.truncation!r})"
            )
