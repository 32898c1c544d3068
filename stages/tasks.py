"""Task definitions: a task's model head, how its examples are encoded, how its predictions are decoded
and scored.

A task is a param (`task` in params.yaml), not a fork of the code: stages ask `get_task(name)` and stay
the same for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from stages import data
from stages.encoding import encode_texts, in_context
from stages.params import TokenizeParams

IGNORE_INDEX = -100  # positions the loss and the metrics skip (transformers' convention)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _per_class(true: Any, pred: Any, classes: list[str], labels: list[Any] | None = None) -> dict[str, dict[str, float]]:
    """precision/recall/F1/support per class (labels=None: the columns of indicator matrices)."""
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    return {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)}


@dataclass(frozen=True)
class SingleLabelClassification:
    """Binary or multi-class sequence classification: one label per text, cross-entropy loss."""

    name: str = "single_label_classification"
    problem_type: str = "single_label_classification"
    headline_metric: str = "accuracy"  # the one number quoted first in logs and the report
    summary_metrics: tuple[str, ...] = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")  # report tables

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        """How many encoded inputs were cut at max_length."""
        return int(sum(n >= max_length for n in encoded["length"]))

    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """A datasets.Dataset of input ids (cut to max_length as `tokenize.truncation` says, not padded),
        targets and lengths; with `chunk`, one row per window, each with its document's target."""
        from datasets import Dataset

        frame = pd.DataFrame({"text": table[data.TEXT], "pair": data.text_pairs(table) or [None] * len(table),
                              "target": self.label_targets(table, labels)})
        pairs = data.TEXT_PAIR in table.columns

        def encode(batch: dict[str, list]) -> dict[str, list]:
            ids, source = encode_texts(tokenizer, batch["text"], params.max_length, params.truncation, params.stride,
                                       batch["pair"] if pairs else None)
            return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                    "labels": [batch["target"][i] for i in source], "length": [len(x) for x in ids]}

        return Dataset.from_pandas(frame, preserve_index=False).map(encode, batched=True, remove_columns=["text", "pair", "target"])

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The training target of each row: its class id."""
        index = {label: i for i, label in enumerate(labels)}
        return table[data.LABEL].astype(str).map(index).tolist()

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)  # pads each batch to its longest member

    def validation_metrics(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str],
                           threshold: float = 0.5) -> dict[str, float]:
        """The metrics the Trainer computes at each evaluation (early stopping picks one of them)."""
        pred = logits.argmax(axis=-1)
        return {
            "accuracy": float(accuracy_score(label_ids, pred)),
            "macro_f1": float(f1_score(label_ids, pred, average="macro", zero_division=0)),
        }

    def score(self, predictor: Any, table: pd.DataFrame, source: str) -> tuple[dict[str, Any], pd.DataFrame]:
        """Test metrics of a Predictor on a split table, and the (actual, predicted) pairs."""
        from stages.errors import PipelineError

        actual = table[data.LABEL].astype(str)
        unknown = ~actual.isin(predictor.labels)
        if unknown.any():
            raise PipelineError(f"{source}: label '{actual[unknown].iloc[0]}' is not one the model predicts {predictor.labels}")
        predicted = predictor.predict(table[data.TEXT].tolist(), data.text_pairs(table))["label"]
        return self.test_metrics(actual.tolist(), predicted.tolist(), predictor.labels), \
            pd.DataFrame({"actual": actual.to_numpy(), "predicted": predicted.to_numpy()})

    def test_metrics(self, true: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
        """Accuracy, macro/micro/weighted F1, precision/recall/F1/support per class, confusion matrix."""
        metrics: dict[str, Any] = {"accuracy": float(accuracy_score(true, pred))}
        for average in ("macro", "micro", "weighted"):
            metrics[f"{average}_f1"] = float(f1_score(true, pred, labels=labels, average=average, zero_division=0))
        metrics["per_class"] = _per_class(true, pred, labels, labels)
        metrics["confusion_matrix"] = confusion_matrix(true, pred, labels=labels).tolist()
        return metrics

    def predict_frame(self, logits: np.ndarray, labels: list[str], thresholds: list[float] | None = None) -> pd.DataFrame:
        """One row per text: the predicted label, its probability, and the probability of every label."""
        probs = softmax(logits)
        ids = probs.argmax(axis=-1)
        frame = pd.DataFrame({"label": [labels[i] for i in ids], "score": probs[np.arange(len(ids)), ids].astype(float)})
        for index, label in enumerate(labels):
            frame[f"score_{label}"] = probs[:, index].astype(float)
        return frame


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class MultiLabelClassification(SingleLabelClassification):
    """0..n labels per text: one sigmoid per label, binary cross-entropy loss, a decision threshold per
    label (one global value, or tuned on the validation set: `finetune.tune_thresholds`)."""

    name: str = "multi_label_classification"
    problem_type: str = "multi_label_classification"  # transformers then uses BCEWithLogitsLoss
    headline_metric: str = "micro_f1"
    summary_metrics: tuple[str, ...] = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The training target of each row: a multi-hot vector of floats (what BCE loss expects)."""
        return [[1.0 if label in set(row) else 0.0 for label in labels] for row in table[data.LABEL]]

    def validation_metrics(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str],
                           threshold: float = 0.5) -> dict[str, float]:
        pred = (sigmoid(logits) >= threshold).astype(int)
        true = label_ids.astype(int)
        return {
            "micro_f1": float(f1_score(true, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(true, pred)),
        }

    def tune_thresholds(self, logits: np.ndarray, label_ids: np.ndarray) -> list[float]:
        """Per label, the threshold on a 0.05 grid with the best validation F1 (ties: the one nearest 0.5)."""
        grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
        probs = sigmoid(logits)
        best = []
        for j in range(probs.shape[1]):
            scores = [f1_score(label_ids[:, j].astype(int), (probs[:, j] >= t).astype(int), zero_division=0) for t in grid]
            top = max(scores)
            best.append(float(min((t for t, f in zip(grid, scores) if f == top), key=lambda t: abs(t - 0.5))))
        return best

    def score(self, predictor: Any, table: pd.DataFrame, source: str) -> tuple[dict[str, Any], pd.DataFrame]:
        from stages.errors import PipelineError

        true = [list(labels) for labels in table[data.LABEL]]
        unknown = {l for labels in true for l in labels} - set(predictor.labels)
        if unknown:
            raise PipelineError(f"{source}: label '{sorted(unknown)[0]}' is not one the model predicts {predictor.labels}")
        pred = predictor.predict(table[data.TEXT].tolist(), data.text_pairs(table))["labels"].tolist()
        pairs = [(l if l in t else "none", l if l in p else "none") for t, p in zip(true, pred) for l in sorted(set(t) | set(p))]
        return self.test_metrics(true, pred, predictor.labels), pd.DataFrame(pairs, columns=["actual", "predicted"])

    def test_metrics(self, true: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict[str, Any]:
        """Micro/macro/weighted F1, subset accuracy (the whole set right) and per-label P/R/F1/support."""
        from sklearn.preprocessing import MultiLabelBinarizer

        binarizer = MultiLabelBinarizer(classes=labels).fit([labels])
        y_true, y_pred = binarizer.transform(true), binarizer.transform(pred)
        metrics: dict[str, Any] = {"subset_accuracy": float(accuracy_score(y_true, y_pred))}
        for average in ("micro", "macro", "weighted"):
            metrics[f"{average}_f1"] = float(f1_score(y_true, y_pred, average=average, zero_division=0))
        metrics["per_class"] = _per_class(y_true, y_pred, labels)
        return metrics

    def predict_frame(self, logits: np.ndarray, labels: list[str], thresholds: list[float] | None = None) -> pd.DataFrame:
        """One row per text: the labels whose probability reaches their threshold, and every probability."""
        probs = sigmoid(logits)
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
        frame = pd.DataFrame({"labels": [[labels[j] for j in np.flatnonzero(row >= cut)] for row in probs]})
        for index, label in enumerate(labels):
            frame[f"score_{label}"] = probs[:, index].astype(float)
        return frame


@dataclass(frozen=True)
class TokenClassification:
    """Named-entity recognition: one IOB2 tag per word; entity-level metrics with seqeval (strict IOB2).

    Words are split into sub-word tokens; only the first token of a word carries its tag, the rest are
    ignored in the loss and in decoding.
    """

    name: str = "token_classification"
    problem_type: str = "token_classification"
    headline_metric: str = "f1"  # entity-level micro F1
    summary_metrics: tuple[str, ...] = ("f1", "precision", "recall", "macro_f1", "accuracy")

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        from datasets import Dataset

        """Each sentence's words (with `tokenize.context: document`, inside their neighbours' words) as input
        ids, and the tag ids of the sentence's words on their first sub-tokens."""
        tag_ids = {tag: i for i, tag in enumerate(labels)}
        sentences = [list(tokens) for tokens in table[data.TOKENS]]
        windows = in_context(sentences, documents(table, params.context), tokenizer, params.max_length, params.mark_case)
        frame = pd.DataFrame({
            "tokens": [words for words, _ in windows],
            # Context words carry IGNORE_INDEX: they are input, not examples.
            "tags": [[IGNORE_INDEX] * offset + [tag_ids[t] for t in tags] + [IGNORE_INDEX] * (len(words) - offset - len(tags))
                     for (words, offset), tags in zip(windows, table[data.TAGS])],
        })

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=params.max_length)
            encoded["labels"] = [first_subtoken_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        return Dataset.from_pandas(frame, preserve_index=False).map(encode, batched=True, remove_columns=["tokens", "tags"])

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        """How many sentences lost words to max_length (those words go untagged). Not the inputs that reach
        max_length: with document context every window is filled up to it by design."""
        return int(sum(sum(label != IGNORE_INDEX for label in labels) < len(tags)
                       for labels, tags in zip(encoded["labels"], table[data.TAGS])))

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)  # pads labels with IGNORE_INDEX too

    def validation_metrics(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str],
                           threshold: float = 0.5) -> dict[str, float]:
        from seqeval.metrics import accuracy_score as tag_accuracy
        from seqeval.metrics import f1_score as entity_f1
        from seqeval.scheme import IOB2

        pred = logits.argmax(axis=-1)
        true_tags = [[labels[t] for t in row if t != IGNORE_INDEX] for row in label_ids]
        pred_tags = [[labels[p] for p, t in zip(prow, trow) if t != IGNORE_INDEX] for prow, trow in zip(pred, label_ids)]
        return {
            "f1": float(entity_f1(true_tags, pred_tags, mode="strict", scheme=IOB2, zero_division=0)),
            "accuracy": float(tag_accuracy(true_tags, pred_tags)),
        }

    def score(self, predictor: Any, table: pd.DataFrame, source: str) -> tuple[dict[str, Any], pd.DataFrame]:
        from stages.errors import PipelineError

        true = [list(tags) for tags in table[data.TAGS]]
        unknown = {t for tags in true for t in tags} - set(predictor.labels)
        if unknown:
            raise PipelineError(f"{source}: tag '{sorted(unknown)[0]}' is not one the model predicts {predictor.labels}")
        pred = predictor.predict_words([list(tokens) for tokens in table[data.TOKENS]], documents(table, predictor.context))
        metrics = self.test_metrics(true, pred, predictor.labels)
        return metrics, entity_pairs(true, pred)

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
            "per_class": {t: {"precision": float(report[t]["precision"]), "recall": float(report[t]["recall"]),
                              "f1": float(report[t]["f1-score"]), "support": int(report[t]["support"])} for t in types},
        }


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


def entity_pairs(true: list[list[str]], pred: list[list[str]]) -> pd.DataFrame:
    """(actual, predicted) entity types over the union of gold and predicted spans: a span only one side
    has is paired with "O". This is the confusion of entity types the report and `dvc plots` show."""
    from seqeval.metrics.sequence_labeling import get_entities

    rows = []
    for sentence_true, sentence_pred in zip(true, pred):
        gold = {(start, end): kind for kind, start, end in get_entities(sentence_true)}
        found = {(start, end): kind for kind, start, end in get_entities(sentence_pred)}
        rows += [(gold.get(span, "O"), found.get(span, "O")) for span in sorted(gold.keys() | found.keys())]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


TASKS = {task.name: task for task in (SingleLabelClassification(), MultiLabelClassification(), TokenClassification())}


def get_task(name: str) -> SingleLabelClassification | MultiLabelClassification | TokenClassification:
    return TASKS[name]
