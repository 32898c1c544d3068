"""Prediction for named-entity recognition: (tag, probability) of each word off its first sub-token, and
the entity spans of raw texts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.data.encoding import in_context
from pipeline.errors import PipelineError
from pipeline.tasks.base import Outcomes, Prediction
from pipeline.tasks.tokens.encoding import documents
from pipeline.tasks.tokens.spec import TokenClassificationSpec
from pipeline.training.calibration import softmax


class TokenClassificationPrediction(TokenClassificationSpec, Prediction):
    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """The entity spans found in each raw text (type, text, character start/end, mean word probability);
        words are the text's whitespace-separated parts, read without document context."""
        from seqeval.metrics.sequence_labeling import get_entities

        spans = [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in texts]
        tagged = tag_words(predictor, [[word for word, _, _ in words] for words in spans])
        entities = []
        for text, words, tags in zip(texts, spans, tagged):
            found = []
            for kind, first, last in get_entities([tag for tag, _ in tags]):
                start, end = words[first][1], words[last][2]
                found.append(
                    {
                        "type": kind,
                        "text": text[start:end],
                        "start": start,
                        "end": end,
                        "score": float(np.mean([p for _, p in tags[first : last + 1]])),
                    }
                )
            entities.append(found)
        return pd.DataFrame({"entities": entities})

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        true = [list(tags) for tags in table[data.TAGS]]
        unknown = {t for tags in true for t in tags} - set(predictor.labels)
        if unknown:
            raise PipelineError(
                f"{source}: tag '{sorted(unknown)[0]}' is not one the model predicts {predictor.labels}"
            )
        pred = predict_words(
            predictor, [list(tokens) for tokens in table[data.TOKENS]], documents(table, predictor.encoding.context)
        )
        return Outcomes(true, pred)


def predict_words(
    predictor: Any, sentences: Sequence[Sequence[str]], documents: Sequence[object] | None = None
) -> list[list[str]]:
    """One tag per word, read off each word's first sub-token; words cut off by max_length get "O". With
    `documents` (a model trained with document context), each sentence is read inside its neighbours of
    the same document, as in training."""
    return [[tag for tag, _ in words] for words in tag_words(predictor, sentences, documents)]


def tag_words(
    predictor: Any, sentences: Sequence[Sequence[str]], documents: Sequence[object] | None = None
) -> list[list[tuple[str, float]]]:
    """(tag, probability) of each word, read off its first sub-token, by `predictor`'s runtime."""
    if not len(sentences):
        return []
    spec = predictor.encoding
    windows = in_context(
        sentences,
        documents if spec.context == "document" else None,
        predictor.tokenizer,
        spec.max_length,
        spec.mark_case,
    )
    encoded = predictor.tokenizer(
        [words for words, _ in windows], is_split_into_words=True, truncation=True, max_length=spec.max_length
    )
    logits = predictor.forward(encoded["input_ids"])
    tagged = []
    for index, words in enumerate(sentences):
        tags = [("O", 1.0)] * len(words)
        offset, previous = windows[index][1], None
        for position, word in enumerate(encoded.word_ids(index)):
            if word is not None and word != previous and offset <= word < offset + len(words):
                probs = softmax(logits[index][position])
                tags[word - offset] = (predictor.labels[int(probs.argmax())], float(probs.max()))
            previous = word
        tagged.append(tags)
    return tagged
