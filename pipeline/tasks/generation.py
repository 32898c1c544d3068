"""Decoder language models: a classification dataset cast as generation.

`generative_classification` fine-tunes a causal LM (SmolLM2 by default in its preset) to answer each text,
wrapped in `tokenize.prompt.template`, with its label's word (`tokenize.prompt.label_words`). Data, splits,
labels, the TF-IDF baseline and every test metric are single-label classification's, so the encoder and
the decoder routes compare on the same test split; what changes:

- training: the loss is on the answer's tokens only (pipeline/prompting.py), LoRA or any peft method
  that applies to decoders, or full fine-tuning;
- the label is read by scoring: the log-probability of each label word's first token after the prompt,
  one forward pass per text (validation, test, serving alike); the scores are the label logits that
  temperature scaling, curves and calibration use;
- a free greedy generation of each test text is also made, and the share that is no label word at all
  reported (`not_a_label_share`): what a user who just prompts would get;
- evaluate also prompts the untuned base model zero-shot and few-shot (`evaluate.prompting`), the
  baselines a fine-tuned decoder must beat.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pipeline import data
from pipeline.prompting import (
    answer_ids,
    demonstrations_for,
    first_tokens,
    generate,
    label_words,
    matching_label,
    next_token_scores,
    prompt_ids,
    training_example,
)
from pipeline.tasks.base import IGNORE_INDEX, Outcomes, register
from pipeline.tasks.classification import SingleLabelClassification

if TYPE_CHECKING:
    from pipeline.card import EncodingSpec, ModelCard
    from pipeline.params import Params, PromptingParams, PromptParams, TokenizeParams


def answer_room(tokenizer: Any, words: list[str]) -> int:
    """Tokens the longest answer takes (word and end of turn): kept free in every prompt."""
    return max(len(answer_ids(tokenizer, word)) for word in words)


@register
class GenerativeClassification(SingleLabelClassification):
    """One label per text, answered in words by a decoder LM and read off the label words' scores."""

    name: ClassVar[str] = "generative_classification"
    description: ClassVar[str] = (
        "a decoder LM answers each text (tokenize.prompt.template) with its label's word; one label per text"
    )
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    reads_prompts: ClassVar[bool] = True
    not_exportable: ClassVar[str | None] = (
        "decoder models are not exported to ONNX yet (the export covers encoder classifiers); PyTorch serves it"
    )

    def check_params(self, params: Params) -> None:
        super().check_params(params)
        if params.ingest.text_pair:
            raise ValueError(f"ingest.text_column: task {self.name} reads one text per prompt, not pairs")
        if params.tokenize.truncation != "head":
            raise ValueError(f"tokenize.truncation: task {self.name} cuts the text's end only (head)")
        if params.finetune.class_weights is not None or params.finetune.label_smoothing:
            key = "class_weights" if params.finetune.class_weights is not None else "label_smoothing"
            raise ValueError(f"finetune.{key}: not available for {self.name} (the loss is the answer's tokens)")
        if params.finetune.head_learning_rate is not None:
            raise ValueError(f"finetune.head_learning_rate: a decoder has no new head ({self.name})")

    # ---- tokenize ----------------------------------------------------------------------------------
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Prompt and answer tokens of each row, labels masked to the answer; `cut` marks cut texts."""
        from datasets import Dataset

        words = label_words(params.prompt, labels)
        first_tokens(tokenizer, words)  # refuse label words that cannot be told apart, before training
        answers = [answer_ids(tokenizer, word) for word in words]
        prompts, cut = prompt_ids(
            tokenizer, params.prompt, table[data.TEXT].tolist(), params.max_length, answer_room(tokenizer, words)
        )
        rows = [
            {**training_example(prompt, answers[target]), "cut": was_cut}
            for prompt, target, was_cut in zip(prompts, self.label_targets(table, labels), cut)
        ]
        return Dataset.from_list(rows) if rows else Dataset.from_dict({"input_ids": [], "labels": [], "length": []})

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        return int(sum(encoded["cut"])) if "cut" in encoded.column_names else 0

    # ---- finetune ----------------------------------------------------------------------------------
    def head_config(self, labels: list[str]) -> dict[str, Any]:
        return {}  # the vocabulary is the head: labels are words, not new outputs

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # Pads inputs with the pad token and labels with IGNORE_INDEX, each batch to its longest member.
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

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

    # ---- predict -----------------------------------------------------------------------------------
    def example_logits(self, predictor: Any, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """The label words' scores after each text's prompt."""
        tokenizer, spec = predictor.tokenizer, predictor.encoding
        prompts, words, _ = self._prompts(tokenizer, spec, predictor.labels, texts)
        return next_token_scores(
            predictor.model, tokenizer, prompts, first_tokens(tokenizer, words), predictor.batch_size
        )

    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """Label and scores as for any classifier, and `cut`: whether the text was cut to fit the prompt
        (tokenize.max_length), so a caller knows the answer read only the text's beginning."""
        frame = super().predict(predictor, texts, pairs)
        frame["cut"] = self._prompts(predictor.tokenizer, predictor.encoding, predictor.labels, texts)[2]
        return frame

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        """Scored labels as for any classifier, plus free generations: how often the model, left to
        generate, says no label word at all."""
        result = super().outcomes(predictor, table, source)
        prompts, words, _ = self._prompts(predictor.tokenizer, predictor.encoding, predictor.labels, table[data.TEXT])
        result.measured = self._free_generation(
            predictor.model,
            predictor.tokenizer,
            prompts,
            words,
            predictor.labels,
            predictor.encoding.prompt.max_new_tokens,
            predictor.batch_size,
        )
        return result

    def _prompts(
        self, tokenizer: Any, spec: EncodingSpec, labels: list[str], texts: Any, demonstrations: Any = None
    ) -> tuple[list[list[int]], list[str], list[bool]]:
        """Prompt tokens of each text, the label words, and which texts were cut to fit."""
        prompt: PromptParams = spec.prompt
        words = label_words(prompt, labels)
        prompts, cut = prompt_ids(
            tokenizer, prompt, list(texts), spec.max_length, answer_room(tokenizer, words), demonstrations
        )
        return prompts, words, cut

    def _free_generation(
        self,
        model: Any,
        tokenizer: Any,
        prompts: list[list[int]],
        words: list[str],
        labels: list[str],
        max_new_tokens: int,
        batch_size: int,
    ) -> dict[str, float]:
        started = time.perf_counter()
        texts, produced = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
        seconds = time.perf_counter() - started
        said = [matching_label(text, words, labels) for text in texts]
        return {
            "not_a_label_share": float(np.mean([label is None for label in said])) if said else 0.0,
            "generated_tokens_per_second": produced / seconds if seconds > 0 else 0.0,
        }

    # ---- evaluate ----------------------------------------------------------------------------------
    def prompting_baselines(
        self,
        pretrained: Callable[[], Path],
        card: ModelCard,
        train: pd.DataFrame,
        test: pd.DataFrame,
        params: PromptingParams,
    ) -> dict[str, dict[str, Any]]:
        """The untuned pretrained model on the test split, prompted with `shots` demonstrations each
        (0: the prompt alone), scored like the fine-tuned model: summary metrics, the share of free
        generations that are no label word, and the cost (seconds, generated tokens/s, prompt tokens)."""
        from transformers import AutoTokenizer

        folder = pretrained()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        base = self.auto_model_class().from_pretrained(folder, trust_remote_code=False, use_safetensors=True).eval()
        texts, true = test[data.TEXT].tolist(), test[data.LABEL].astype(str).tolist()
        words = label_words(card.encoding.prompt, card.labels)
        word_of = dict(zip(card.labels, words))
        pool_texts, pool_answers = train[data.TEXT].tolist(), [word_of[str(v)] for v in train[data.LABEL]]
        firsts = first_tokens(tokenizer, words)
        batch_size = 16
        out: dict[str, dict[str, Any]] = {}
        for k in params.shots:
            started = time.perf_counter()
            shown = demonstrations_for(texts, pool_texts, pool_answers, k, params.seed)
            prompts, _, _ = self._prompts(tokenizer, card.encoding, card.labels, texts, shown)
            scores = next_token_scores(base, tokenizer, prompts, firsts, batch_size)
            pred = [card.labels[i] for i in scores.argmax(axis=1)]
            measured = self._free_generation(
                base, tokenizer, prompts, words, card.labels, card.encoding.prompt.max_new_tokens, batch_size
            )
            out["zero-shot" if k == 0 else f"{k}-shot"] = {
                "shots": k,
                **self.summary_scores(true, pred, card.labels),
                **measured,
                "seconds": round(time.perf_counter() - started, 1),
                "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1) if prompts else 0.0,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        return out
