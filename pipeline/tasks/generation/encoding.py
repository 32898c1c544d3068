"""Tokenize for decoder tasks: each text's prompt (pipeline/tasks/generation/prompting.py) with its answer, the loss on
the answer's tokens only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import data
from pipeline.tasks.base import Encoder
from pipeline.tasks.generation.prompting import (
    History,
    answer_ids,
    answer_room,
    end_of_turn,
    first_tokens,
    label_words,
    prompt_ids,
    prompts_and_histories,
    reply_spans,
    training_example,
)
from pipeline.tasks.generation.spec import GenerativeClassificationSpec, TextGenerationSpec

if TYPE_CHECKING:
    from pipeline.schema import TokenizeParams


class DecoderEncoder(Encoder):
    """Prompt and answer tokens: what both decoder tasks share."""

    @staticmethod
    def examples(
        prompts: list[list[int]],
        answers: list[list[int]],
        cut: list[bool],
        learnt: list[list[tuple[int, int]]] | None = None,
    ) -> Any:
        """The tokenized split: each prompt with its answer (the loss on the answer, and on the prompt's
        `learnt` spans), and whether its text was cut to fit."""
        from datasets import Dataset

        learnt = learnt if learnt is not None else [[] for _ in prompts]
        rows = [{**training_example(p, a, s), "cut": c} for p, a, c, s in zip(prompts, answers, cut, learnt)]
        return Dataset.from_list(rows) if rows else Dataset.from_dict({"input_ids": [], "labels": [], "length": []})

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        return int(sum(encoded["cut"])) if "cut" in encoded.column_names else 0


class GenerativeClassificationEncoder(GenerativeClassificationSpec, DecoderEncoder):
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Prompt and answer tokens of each row, labels masked to the answer; `cut` marks cut texts."""

        words = label_words(params.prompt, labels)
        first_tokens(tokenizer, words)  # refuse label words that cannot be told apart, before training
        answers = [answer_ids(tokenizer, word) for word in words]
        prompts, cut = prompt_ids(
            tokenizer, params.prompt, table[data.TEXT].tolist(), params.max_length, answer_room(tokenizer, words)
        )
        return self.examples(prompts, [answers[target] for target in self.label_targets(table, labels)], cut)


class TextGenerationEncoder(TextGenerationSpec, DecoderEncoder):
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Prompt and response tokens (the response cut to `max_new_tokens`), labels masked to the
        response, and for a chat to every earlier assistant reply it kept too, each with its end-of-turn
        token (`tokenize.prompt.learn_earlier_replies`; false: the last reply only); `cut` marks texts cut to
        fit the prompt."""

        limit, spec = params.prompt.max_new_tokens, params.prompt
        responses = tokenizer(table[data.LABEL].tolist(), add_special_tokens=False)["input_ids"] if len(table) else []
        histories = chat_histories(table)
        prompts, cut, kept = prompts_and_histories(
            tokenizer, spec, table[data.TEXT].tolist(), params.max_length, limit + 1, histories=histories
        )
        learnt = (
            [reply_spans(tokenizer, spec, history, prompt) for history, prompt in zip(kept, prompts)]
            if histories is not None and spec.learn_earlier_replies
            else None
        )
        answers = [response[:limit] + [end_of_turn(tokenizer)] for response in responses]
        return self.examples(prompts, answers, cut, learnt)


def chat_histories(table: pd.DataFrame) -> list[History] | None:
    """Each record's chat history, None for records that are not chats."""
    return [History.from_json(h) for h in table[data.HISTORY]] if data.HISTORY in table.columns else None
