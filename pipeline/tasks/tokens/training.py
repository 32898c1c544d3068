"""Finetune for named-entity recognition: a token-classification head, tag-level loss, entity-level F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.data.encoding import IGNORE_INDEX
from pipeline.tasks.base import TrainingHooks
from pipeline.tasks.classification.training import balanced_weights, cross_entropy_sum
from pipeline.tasks.tokens.spec import TokenClassificationSpec


class TokenClassificationHooks(TokenClassificationSpec, TrainingHooks):
    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorForTokenClassification

        # Pads labels with IGNORE_INDEX too.
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        from seqeval.metrics import accuracy_score as tag_accuracy
        from seqeval.metrics import f1_score as entity_f1
        from seqeval.scheme import IOB2

        pred = logits.argmax(axis=-1)
        true_tags = [[labels[t] for t in row if t != IGNORE_INDEX] for row in label_ids]
        pred_tags = [
            [labels[p] for p, t in zip(prow, trow) if t != IGNORE_INDEX] for prow, trow in zip(pred, label_ids)
        ]
        return {
            "f1": float(entity_f1(true_tags, pred_tags, mode="strict", scheme=IOB2, zero_division=0)),
            "accuracy": float(tag_accuracy(true_tags, pred_tags)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        return balanced_weights(np.concatenate([np.ravel(t) for t in targets]), n_labels)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        return cross_entropy_sum(logits, labels, weights, label_smoothing)
