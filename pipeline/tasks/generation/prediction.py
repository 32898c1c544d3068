"""Prediction for decoder tasks: label words' scores and a free generation from one pass over each
prompt (generative classification), or the generated response (text generation)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.tasks.base import Outcomes, Prediction
from pipeline.tasks.classification.prediction import SingleLabelPrediction
from pipeline.tasks.generation.encoding import chat_histories
from pipeline.tasks.generation.generating import (
    GREEDY,
    Generated,
    Sampling,
    generate,
    matching_label,
    next_token_scores,
)
from pipeline.tasks.generation.prompting import History, answer_room, first_tokens, label_words, prompt_ids
from pipeline.tasks.generation.spec import GenerativeClassificationSpec, TextGenerationSpec

if TYPE_CHECKING:
    from pipeline.card import EncodingSpec
    from pipeline.schema import PromptParams


class GenerativeClassificationPrediction(GenerativeClassificationSpec, SingleLabelPrediction):
    def example_logits(self, predictor: Any, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """The label words' scores after each text's prompt, without generating."""
        tokenizer = predictor.tokenizer
        prompts, words, _ = self._prompts(tokenizer, predictor.encoding, predictor.labels, texts)
        return next_token_scores(
            predictor.model, tokenizer, prompts, first_tokens(tokenizer, words), predictor.batch_size
        )

    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """Label and scores as for any classifier; `generated`, the model's own answer left free (greedy
        unless batch prediction samples), whose first step gives the scores, so both cost one pass over
        each prompt plus at most `max_new_tokens` cached steps; and `cut`: whether the text was cut to fit
        the prompt (tokenize.max_length), so a caller knows the answer read only the text's beginning."""
        generated, _, cut = self._answered(predictor, texts)
        frame = self.predict_frame(
            generated.first_scores / predictor.card.temperature, predictor.labels, predictor.card.thresholds
        )
        frame["generated"] = generated.texts
        frame["cut"] = cut
        return frame

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        """Labels read off the label words' scores as for any classifier, and, from the same pass over each
        prompt, a free generation: how often the model, left to generate, says no label word at all."""
        true = self.checked_truth(table, predictor.labels, source)
        generated, measured, _ = self._answered(predictor, table[data.TEXT])
        return self.scored_outcomes(predictor, table, true, generated.first_scores, measured)

    def _answered(self, predictor: Any, texts: Any) -> tuple[Generated, dict[str, float], list[bool]]:
        """The fine-tuned model's answers to `texts` (`_answers`), and which texts were cut to fit."""
        prompts, words, cut = self._prompts(predictor.tokenizer, predictor.encoding, predictor.labels, texts)
        generated, measured = self._answers(
            predictor.model,
            predictor.tokenizer,
            prompts,
            words,
            predictor.labels,
            predictor.sampling.new_tokens(predictor.encoding.prompt.max_new_tokens),
            predictor.batch_size,
            predictor.sampling,
        )
        return generated, measured, cut

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

    def _answers(
        self,
        model: Any,
        tokenizer: Any,
        prompts: list[list[int]],
        words: list[str],
        labels: list[str],
        max_new_tokens: int,
        batch_size: int,
        sampling: Sampling = GREEDY,
    ) -> tuple[Generated, dict[str, float]]:
        """A free generation after each prompt with, from its first step, the label words' scores; and
        the share of generations that are no label word, and the generated tokens per second."""
        started = time.perf_counter()
        generated = generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, sampling, scored=first_tokens(tokenizer, words)
        )
        seconds = time.perf_counter() - started
        said = [matching_label(text, words, labels) for text in generated.texts]
        return generated, {
            "not_a_label_share": float(np.mean([label is None for label in said])) if said else 0.0,
            "generated_tokens_per_second": generated.tokens / seconds if seconds > 0 else 0.0,
        }


class TextGenerationPrediction(TextGenerationSpec, Prediction):
    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """The generated response of each text, and whether the text was cut to fit the prompt."""
        return self._respond(predictor, texts, None)

    def _respond(self, predictor: Any, texts: list[str], histories: list[History] | None) -> pd.DataFrame:
        spec = predictor.encoding
        prompts, cut = prompt_ids(
            predictor.tokenizer,
            spec.prompt,
            texts,
            spec.max_length,
            spec.prompt.max_new_tokens + 1,
            histories=histories,
        )
        generated = generate(
            predictor.model,
            predictor.tokenizer,
            prompts,
            predictor.sampling.new_tokens(spec.prompt.max_new_tokens),
            predictor.batch_size,
            predictor.sampling,
        )
        return pd.DataFrame({"generated": generated.texts, "cut": cut})

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        started = time.perf_counter()
        frame = self._respond(predictor, table[data.TEXT].tolist(), chat_histories(table))
        seconds = time.perf_counter() - started
        tokens = (
            sum(len(ids) for ids in predictor.tokenizer(frame["generated"].tolist())["input_ids"]) if len(frame) else 0
        )
        return Outcomes(
            table[data.LABEL].tolist(),
            frame["generated"].tolist(),
            measured={"generated_tokens_per_second": tokens / seconds if seconds > 0 else 0.0},
        )
