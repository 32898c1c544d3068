"""Tokenize for named-entity recognition: each sentence's words (in their document's context, if asked)
as input ids, with the tag of each word on its first sub-token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import data
from pipeline.data.encoding import IGNORE_INDEX, in_context
from pipeline.tasks.base import Encoder
from pipeline.tasks.tokens.spec import TokenClassificationSpec

if TYPE_CHECKING:
    from pipeline.schema import TokenizeParams


class TokenClassificationEncoder(TokenClassificationSpec, Encoder):
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Each sentence's words (with `tokenize.context: document`, inside their neighbours' words) as input
        ids, and the tag ids of the sentence's words on their first sub-tokens."""
        from datasets import Dataset

        tag_ids = {tag: i for i, tag in enumerate(labels)}
        sentences = [list(tokens) for tokens in table[data.TOKENS]]
        windows = in_context(
            sentences, documents(table, params.context), tokenizer, params.max_length, params.mark_case
        )
        frame = pd.DataFrame(
            {
                "tokens": [words for words, _ in windows],
                # Context words carry IGNORE_INDEX: they are input, not examples.
                "tags": [
                    [IGNORE_INDEX] * offset
                    + [tag_ids[t] for t in tags]
                    + [IGNORE_INDEX] * (len(words) - offset - len(tags))
                    for (words, offset), tags in zip(windows, table[data.TAGS])
                ],
            }
        )

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                batch["tokens"], is_split_into_words=True, truncation=True, max_length=params.max_length
            )
            encoded["labels"] = [
                first_subtoken_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["tags"])
            ]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        return Dataset.from_pandas(frame, preserve_index=False).map(
            encode, batched=True, remove_columns=["tokens", "tags"]
        )

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        """How many sentences lost words to max_length (those words go untagged). Not the inputs that reach
        max_length: with document context every window is filled up to it by design."""
        return int(
            sum(
                sum(label != IGNORE_INDEX for label in labels) < len(tags)
                for labels, tags in zip(encoded["labels"], table[data.TAGS])
            )
        )


def documents(table: pd.DataFrame, context: str) -> list[Any] | None:
    """The document of each sentence when sentences get document context, else None (each stands alone)."""
    if context == "none" or data.DOCUMENT not in table.columns:
        return None
    return table[data.DOCUMENT].tolist()


def first_subtoken_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label each word's first sub-token; special tokens and continuation sub-tokens get IGNORE_INDEX."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE_INDEX if word is None or word == previous else word_labels[word])
        previous = word
    return out
