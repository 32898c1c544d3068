"""Finetune for sequence classification: the classifier head (mean pooling where asked), weighted losses,
validation metrics, temperature scaling and, for label sets, per-label decision thresholds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from pipeline.data.encoding import IGNORE_INDEX
from pipeline.errors import PipelineError
from pipeline.tasks.base import TrainingHooks
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec, TextClassificationSpec
from pipeline.training.calibration import fit_temperature, sigmoid

if TYPE_CHECKING:
    from pipeline.schema import FinetuneParams


class SequenceClassifier:
    """transformers' AutoModelForSequenceClassification, with one addition. A model whose config says
    `classifier_pooling: mean` (finetune.classifier_pooling; saved in config.json, so the model is loaded as
    it was trained) classifies the mean of its last hidden states over each text's tokens instead of the
    first token through the pretrained pooler. Sentence encoders such as all-MiniLM-L6-v2 were trained to
    represent a text by that mean. transformers pools so for ModernBERT alone (a config that has the key
    itself keeps its own code), hence this, for heads of BERT's form: a dropout and a linear classifier."""

    @staticmethod
    def from_pretrained(model_dir: Any, *args: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return mean_pooled_if_configured(AutoModelForSequenceClassification.from_pretrained(model_dir, *args, **kwargs))

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return mean_pooled_if_configured(AutoModelForSequenceClassification.from_config(config, **kwargs))


def mean_pooled_if_configured(model: Any) -> Any:
    """`model` (a transformers sequence classifier) as the mean-pooling variant of its class when its config
    asks for it; else unchanged."""
    config = model.config
    if getattr(config, "classifier_pooling", "cls") == "cls" or hasattr(type(config)(), "classifier_pooling"):
        return model
    head = {name for name, _ in model.named_children()} - {model.base_model_prefix}
    if head != {"dropout", "classifier"} or not isinstance(model.classifier, torch.nn.Linear):
        raise PipelineError(
            f"finetune.classifier_pooling: mean needs a head of a dropout and a linear classifier, as BERT's; "
            f"{type(model).__name__} has another (use cls)"
        )
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        # Its output is no longer read. Kept, so the saved folder loads as any checkpoint of the architecture
        # does, and frozen: distributed training needs a gradient for every parameter it trains.
        pooler.requires_grad_(False)
    model.__class__ = mean_pooled_class(type(model))
    return model


@functools.cache
def mean_pooled_class(classifier_class: type) -> type:
    """A subclass of `classifier_class` whose forward pools by the mean; of the same name, so the saved
    config names the architecture transformers knows."""

    def forward(
        self: Any,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        from transformers.loss.loss_utils import ForSequenceClassificationLoss
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs.pop("num_items_in_batch", None)  # the loss below is a mean over the batch
        kwargs["return_dict"] = True  # (peft passes its own)
        outputs = self.base_model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = ForSequenceClassificationLoss(labels, logits, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    return type(classifier_class.__name__, (classifier_class,), {"forward": forward, "__module__": __name__})


class TextClassificationHooks(TextClassificationSpec, TrainingHooks):
    def auto_model_class(self) -> Any:
        return SequenceClassifier

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorWithPadding

        # Pads each batch to its longest member (rounded up to pad_to_multiple_of).
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def fit_temperature(self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]]) -> float:
        logits, label_ids = validation_outputs()
        return fit_temperature(logits, label_ids, multi_label=self.problem_type == "multi_label_classification")


class SingleLabelHooks(SingleLabelSpec, TextClassificationHooks):
    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        pred = logits.argmax(axis=-1)
        return {
            "accuracy": float(accuracy_score(label_ids, pred)),
            "macro_f1": float(f1_score(label_ids, pred, average="macro", zero_division=0)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        return balanced_weights(np.asarray(targets).ravel(), n_labels)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        return cross_entropy_sum(logits, labels, weights, label_smoothing)


class MultiLabelHooks(MultiLabelSpec, TextClassificationHooks):
    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        pred = (sigmoid(logits) >= threshold).astype(int)
        true = label_ids.astype(int)
        return {
            "micro_f1": float(f1_score(true, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(true, pred)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        """Negatives / positives of each label: BCE's pos_weight."""
        positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
        return (len(targets) - positives) / np.maximum(positives, 1)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        targets = labels.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=weights, reduction="sum"
        )
        return loss, labels.numel()

    def decision_thresholds(
        self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]], params: FinetuneParams, n_labels: int
    ) -> list[float] | None:
        """`finetune.threshold` for every label, or with `finetune.tune_thresholds` the best per label on the
        validation split (with the best weights)."""
        if not params.tune_thresholds:
            return [params.threshold] * n_labels
        return self.tune_thresholds(*validation_outputs())

    def tune_thresholds(self, logits: np.ndarray, label_ids: np.ndarray) -> list[float]:
        """Per label, the threshold on a 0.05 grid with the best validation F1 (ties: the one nearest 0.5)."""
        grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
        probs = sigmoid(logits)
        best = []
        for j in range(probs.shape[1]):
            scores = [
                f1_score(label_ids[:, j].astype(int), (probs[:, j] >= t).astype(int), zero_division=0) for t in grid
            ]
            top = max(scores)
            best.append(float(min((t for t, f in zip(grid, scores) if f == top), key=lambda t: abs(t - 0.5))))
        return best


def balanced_weights(class_ids: np.ndarray, n_labels: int) -> np.ndarray:
    """n / (classes * count) per class, sklearn's "balanced"; positions with IGNORE_INDEX do not count."""
    counts = np.bincount(class_ids[class_ids != IGNORE_INDEX], minlength=n_labels).astype(np.float64)
    return counts.sum() / (n_labels * np.maximum(counts, 1))


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over every labelled position (sequences: one per text; tokens: per word)."""
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        weight=weights,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return loss, int((labels != IGNORE_INDEX).sum())
