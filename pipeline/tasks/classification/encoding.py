"""Tokenize for sequence classification: texts (and pairs) to input ids cut as `tokenize.truncation` says,
with each row's target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import data
from pipeline.data.encoding import encode_texts
from pipeline.tasks.base import Encoder
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec, TextClassificationSpec

if TYPE_CHECKING:
    from pipeline.schema import TokenizeParams


class TextClassificationEncoder(TextClassificationSpec, Encoder):
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Input ids (cut to max_length as `tokenize.truncation` says, not padded), targets and lengths;
        with `chunk`, one row per window, each with its document's target."""
        from datasets import Dataset

        frame = pd.DataFrame(
            {
                "text": table[data.TEXT],
                "pair": data.text_pairs(table) or [None] * len(table),
                "target": self.label_targets(table, labels),
            }
        )
        pairs = data.TEXT_PAIR in table.columns

        def encode(batch: dict[str, list]) -> dict[str, list]:
            ids, source = encode_texts(
                tokenizer,
                batch["text"],
                params.max_length,
                params.truncation,
                params.stride,
                batch["pair"] if pairs else None,
                params.max_chars,
            )
            return {
                "input_ids": ids,
                "attention_mask": [[1] * len(x) for x in ids],
                "labels": [batch["target"][i] for i in source],
                "length": [len(x) for x in ids],
            }

        return Dataset.from_pandas(frame, preserve_index=False).map(
            encode, batched=True, remove_columns=["text", "pair", "target"]
        )

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        """How many encoded inputs were cut at max_length."""
        return int(sum(n >= max_length for n in encoded["length"]))


class SingleLabelEncoder(SingleLabelSpec, TextClassificationEncoder):
    pass


class MultiLabelEncoder(MultiLabelSpec, TextClassificationEncoder):
    pass
