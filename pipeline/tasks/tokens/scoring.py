"""Scoring for named-entity recognition: entity-level metrics (seqeval, strict IOB2), entity-type
confusions, and a word-feature logistic regression as the classical baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.tasks.base import Outcomes, Scoring
from pipeline.tasks.tokens.spec import TokenClassificationSpec

if TYPE_CHECKING:
    from pipeline.schema import BaselineParams


class TokenClassificationScoring(TokenClassificationSpec, Scoring):
    def confusion_pairs(self, true: list[Any], pred: list[Any]) -> pd.DataFrame:
        return entity_pairs(true, pred)

    def error_examples(
        self, texts: list[str], result: Outcomes, probabilities: np.ndarray | None, labels: list[str], k: int
    ) -> pd.DataFrame:
        """The 2k most frequent (gold, predicted) entity-type confusions, each with up to two sentences."""
        found: dict[tuple[str, str], list[str]] = {}
        counts: dict[tuple[str, str], int] = {}
        for text, sentence_true, sentence_pred in zip(texts, result.true, result.pred):
            words = text.split(" ")
            for (start, end), gold, predicted in span_pairs(sentence_true, sentence_pred):
                if gold != predicted:
                    counts[gold, predicted] = counts.get((gold, predicted), 0) + 1
                    examples = found.setdefault((gold, predicted), [])
                    if len(examples) < 2:
                        marked = [*words[:start], "[[", *words[start : end + 1], "]]", *words[end + 1 :]]
                        examples.append(" ".join(marked))
        ranked = sorted(counts, key=lambda pair: (-counts[pair], pair))[: 2 * k]
        rows = [
            ("confusion", gold, example, gold, predicted, float(counts[gold, predicted]))
            for gold, predicted in ranked
            for example in found[gold, predicted]
        ]
        return pd.DataFrame(rows, columns=["kind", "class", "text", "gold", "predicted", "score"])

    def test_metrics(self, true: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict[str, Any]:
        """Entity-level precision/recall/F1 overall (micro) and per entity type, plus tag accuracy."""
        from seqeval.metrics import accuracy_score as tag_accuracy
        from seqeval.metrics import classification_report
        from seqeval.scheme import IOB2

        report = classification_report(true, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        types = sorted(k for k in report if k not in ("micro avg", "macro avg", "weighted avg"))
        micro = report["micro avg"]
        return {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "macro_f1": float(report["macro avg"]["f1-score"]),
            "weighted_f1": float(report["weighted avg"]["f1-score"]),
            "accuracy": float(tag_accuracy(true, pred)),
            "per_class": {
                t: {
                    "precision": float(report[t]["precision"]),
                    "recall": float(report[t]["recall"]),
                    "f1": float(report[t]["f1-score"]),
                    "support": int(report[t]["support"]),
                }
                for t in types
            },
        }

    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        """Logistic regression on each word's features and its neighbours'."""
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        pipeline = make_pipeline(DictVectorizer(), LogisticRegression(C=params.C, max_iter=300))
        pipeline.fit(
            [f for s in train[data.TOKENS] for f in word_features(list(s))], [t for s in train[data.TAGS] for t in s]
        )
        flat = pipeline.predict([f for s in test[data.TOKENS] for f in word_features(list(s))]).tolist()
        lengths = np.cumsum([0] + test[data.TOKENS].map(len).tolist())
        predicted = [flat[start:end] for start, end in zip(lengths[:-1], lengths[1:])]
        return [list(t) for t in test[data.TAGS]], predicted


def word_features(words: list[str]) -> list[dict[str, Any]]:
    """Per-word features of the classical NER baseline: the word, its shape and affixes, its neighbours."""

    def shape(word: str) -> dict[str, Any]:
        return {
            "lower": word.lower(),
            "title": word.istitle(),
            "upper": word.isupper(),
            "digit": word.isdigit(),
            "suffix3": word[-3:].lower(),
            "prefix3": word[:3].lower(),
        }

    features = []
    for i, word in enumerate(words):
        feature = shape(word)
        feature["prev"] = words[i - 1].lower() if i else "<s>"
        feature["next"] = words[i + 1].lower() if i + 1 < len(words) else "</s>"
        feature["prev_title"] = words[i - 1].istitle() if i else False
        features.append(feature)
    return features


def span_pairs(true: list[str], pred: list[str]) -> list[tuple[tuple[int, int], str, str]]:
    """((first word, last word), gold type, predicted type) over the union of one sentence's gold and
    predicted spans: a span only one side has is paired with "O"."""
    from seqeval.metrics.sequence_labeling import get_entities

    gold = {(start, end): kind for kind, start, end in get_entities(true)}
    found = {(start, end): kind for kind, start, end in get_entities(pred)}
    return [(span, gold.get(span, "O"), found.get(span, "O")) for span in sorted(gold.keys() | found.keys())]


def entity_pairs(true: list[list[str]], pred: list[list[str]]) -> pd.DataFrame:
    """(actual, predicted) entity types of every span: the confusion the report and `dvc plots` show."""
    rows = [(gold, found) for t, p in zip(true, pred) for _, gold, found in span_pairs(t, p)]
    return pd.DataFrame(rows, columns=["actual", "predicted"])
