"""Task definitions: what a task's model head is and how its predictions are scored.

A task is a param (`task` in params.yaml), not a fork of the code: stages ask `get_task(name)` for the
head class and the metrics, and stay the same for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


@dataclass(frozen=True)
class SingleLabelClassification:
    """Binary or multi-class sequence classification: one label per text, cross-entropy loss."""

    name: str = "single_label_classification"
    problem_type: str = "single_label_classification"

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over the classes of each row."""
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def decode(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class ids and the probability of each prediction."""
        probs = self.probabilities(logits)
        ids = probs.argmax(axis=-1)
        return ids, probs[np.arange(len(ids)), ids]

    def validation_metrics(self, logits: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        """The metrics the Trainer computes at each evaluation (early stopping picks one of them)."""
        pred = logits.argmax(axis=-1)
        return {
            "accuracy": float(accuracy_score(label_ids, pred)),
            "macro_f1": float(f1_score(label_ids, pred, average="macro", zero_division=0)),
        }

    def test_metrics(self, label_ids: np.ndarray, pred_ids: np.ndarray, labels: list[str]) -> dict[str, Any]:
        """Accuracy, averaged F1 scores, and precision/recall/F1/support per class."""
        ids = list(range(len(labels)))
        precision, recall, f1, support = precision_recall_fscore_support(
            label_ids, pred_ids, labels=ids, zero_division=0
        )
        metrics: dict[str, Any] = {"accuracy": float(accuracy_score(label_ids, pred_ids))}
        for average in ("macro", "micro", "weighted"):
            metrics[f"{average}_f1"] = float(f1_score(label_ids, pred_ids, labels=ids, average=average, zero_division=0))
        metrics["per_class"] = {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        }
        metrics["confusion_matrix"] = confusion_matrix(label_ids, pred_ids, labels=ids).tolist()
        return metrics


TASKS = {task.name: task for task in (SingleLabelClassification(),)}


def get_task(name: str) -> SingleLabelClassification:
    return TASKS[name]
