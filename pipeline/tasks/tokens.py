"""Named-entity recognition: one IOB2 tag per word; entity-level metrics with seqeval (strict IOB2).

Words are split into sub-word tokens; only the first token of a word carries its tag, the rest are ignored
in the loss and in decoding.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pipeline import data
from pipeline.encoding import IGNORE_INDEX, in_context
from pipeline.errors import PipelineError
from pipeline.tasks.base import Outcomes, Task
from pipeline.tasks.classification import balanced_weights, cross_entropy_sum

if TYPE_CHECKING:
    from pipeline.schema import BaselineParams, IngestParams, Params, TokenizeParams


class TokenClassification(Task):
    """One IOB2 tag per word of a sentence (NER); CoNLL column files in, entity spans out."""

    name: ClassVar[str] = "token_classification"
    description: ClassVar[str] = "NER: one IOB2 tag per word; needs ingest.format conll"
    problem_type: ClassVar[str] = "token_classification"
    peft_task_type: ClassVar[str] = "TOKEN_CLS"
    headline_metric: ClassVar[str] = "f1"  # entity-level micro F1
    summary_metrics: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "macro_f1", "accuracy")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("f1", "accuracy")
    baseline_name: ClassVar[str] = "word-feature logistic regression"
    example_unit: ClassVar[str] = "sentences"
    confusion_none: ClassVar[str | None] = "O"  # a span only one side found is paired with "O"
    error_examples_note: ClassVar[str] = (
        "The most frequent confusions of entity types (O: a span only one side found, so a boundary error is "
        "an O row and a row to O), with up to two example sentences each, the span in [[ ]]; score: how many "
        "times the confusion occurs in the test split."
    )

    def check_params(self, params: Params) -> None:
        if params.ingest.format != "conll":
            raise ValueError(f"ingest.format: task {self.name} needs conll (got {params.ingest.format!r})")
        if params.ingest.slice_column is not None:
            raise ValueError(f"ingest.slice_column: CoNLL files have no columns to slice by (task {self.name})")
        if params.tokenize.max_chars is not None:
            raise ValueError(f"tokenize.max_chars: for text classification; {self.name} reads words (null)")
        if params.tokenize.truncation != "head":
            raise ValueError(
                f"tokenize.truncation: {self.name} supports head only (got {params.tokenize.truncation!r})"
            )

    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
        """The file's sentences; a sentence repeated with the same tags is one example (a retweet, a
        dateline), and the copies of one whose tags disagree are all dropped, both counted, as for labels."""
        table, repaired = data.read_conll(path, params.encoding, params.conll)
        # the same words, case included: case is what tells "Apple" (B-ORG) from "apple" (O)
        same_words = table[data.TOKENS].map(lambda words: "\x1f".join(words))
        kept, duplicate, conflicting = data.drop_duplicates(table, data.TAGS, keys=same_words)
        dropped = {"duplicate": duplicate, "conflicting_duplicate": conflicting}
        return kept.reset_index(drop=True), len(table), {"dropped": dropped, "repaired": repaired}

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        """O, then B-X and I-X of each entity type in alphabetical order."""
        return data.tag_order({tag for table in tables for tags in table[data.TAGS] for tag in tags})

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        return data.describe_tokens(table)

    def strata(self, table: pd.DataFrame) -> pd.Series:
        """CoNLL data comes with its published splits; a re-split stratifies on the sentence's first entity
        type ("O" for none)."""
        return table[data.TAGS].map(lambda tags: next((t[2:] for t in tags if t != "O"), "O"))

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

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

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorForTokenClassification

        # Pads labels with IGNORE_INDEX too.
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        from seqeval.metrics import accuracy_score as tag_accuracy
        from seqeval.metrics import f1_score as entity_f1
        from seqeval.scheme import IOB2

        pred = logits.argmax(axis=-1)
        true_tags = [[labels[t] for t in row if t != IGNORE_INDEX] for row in label_ids]
        pred_tags = [
            [labels[p] for p, t in zip(prow, trow) if t != IGNORE_INDEX] for prow, trow in zip(pred, label_ids)
        ]
        return {
            "f1": float(entity_f1(true_tags, pred_tags, mode="strict", scheme=IOB2, zero_division=0)),
            "accuracy": float(tag_accuracy(true_tags, pred_tags)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        return balanced_weights(np.concatenate([np.ravel(t) for t in targets]), n_labels)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        return cross_entropy_sum(logits, labels, weights, label_smoothing)

    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """The entity spans found in each raw text (type, text, character start/end, mean word probability);
        words are the text's whitespace-separated parts, read without document context."""
        from seqeval.metrics.sequence_labeling import get_entities

        spans = [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in texts]
        tagged = predictor.tag_words([[word for word, _, _ in words] for words in spans])
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
        pred = predictor.predict_words(
            [list(tokens) for tokens in table[data.TOKENS]], documents(table, predictor.encoding.context)
        )
        return Outcomes(true, pred)

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
