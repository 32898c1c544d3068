"""Finetune for decoder tasks: a causal LM whose vocabulary is the head, batches padded with the loss
masked to the answer, and what of each evaluation batch the validation metrics keep."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.data.encoding import IGNORE_INDEX
from pipeline.tasks.base import TrainingHooks
from pipeline.tasks.classification.training import SingleLabelHooks
from pipeline.tasks.generation.prompting import first_tokens, label_words
from pipeline.tasks.generation.spec import GenerativeClassificationSpec, TextGenerationSpec

if TYPE_CHECKING:
    from pipeline.schema import TokenizeParams


class DecoderHooks(TrainingHooks):
    """The causal LM and its batches: what both decoder tasks share. Listed first among a task's bases."""

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        return {}  # the vocabulary is the head: answers are words, not new outputs

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # Pads inputs with the pad token and labels with IGNORE_INDEX, each batch to its longest member.
        return DataCollatorForSeq2Seq(
            tokenizer, padding=True, pad_to_multiple_of=pad_to_multiple_of, label_pad_token_id=IGNORE_INDEX
        )


class GenerativeClassificationHooks(GenerativeClassificationSpec, DecoderHooks, SingleLabelHooks):
    def metric_logits(
        self, tokenizer: Any, labels: list[str], params: TokenizeParams
    ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """Of each evaluation batch, keep the label words' scores where the answer starts and the gold
        label id: (batch, labels) and (batch,), instead of (batch, positions, vocabulary) logits."""
        firsts = torch.tensor(first_tokens(tokenizer, label_words(params.prompt, labels)))

        def keep(logits: Any, token_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = logits[0] if isinstance(logits, tuple) else logits
            rows = torch.arange(len(token_labels))
            start = (token_labels != IGNORE_INDEX).int().argmax(dim=1)  # the answer's first position
            scores = torch.log_softmax(logits[rows, start - 1].float(), dim=-1)[:, firsts.to(logits.device)]
            gold = (token_labels[rows, start].unsqueeze(1) == firsts.to(token_labels.device)).int().argmax(dim=1)
            return scores, gold

        return keep

    def metric_arrays(self, predictions: Any, label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, gold = predictions  # what metric_logits kept
        return np.asarray(scores), np.asarray(gold)


class TextGenerationHooks(TextGenerationSpec, DecoderHooks):
    def metric_logits(
        self, tokenizer: Any, labels: list[str], params: TokenizeParams
    ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """Keep nothing of the vocabulary logits: the validation loss is the metric."""
        return lambda logits, token_labels: token_labels.new_zeros(len(token_labels), 1)

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        return {}

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        raise NotImplementedError("text generation has no classes (refused in check_params)")

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        raise NotImplementedError("text generation keeps the model's own loss (refused in check_params)")
