"""Sequence classification: a label (or a set of labels) per text or text pair.

`TextClassification` holds what both share (reading tables, encoding texts, long-text truncation,
TF-IDF baseline); single-label and multi-label differ in targets, loss, decoding and metrics.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline import data
from pipeline.calibration import fit_temperature
from pipeline.encoding import IGNORE_INDEX, encode_texts
from pipeline.errors import PipelineError
from pipeline.tasks.base import Outcomes, Task

if TYPE_CHECKING:
    from pipeline.schema import BaselineParams, FinetuneParams, IngestParams, Params, TokenizeParams


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def per_class(true: Any, pred: Any, classes: list[str], labels: list[Any] | None = None) -> dict[str, dict[str, float]]:
    """precision/recall/F1/support per class (labels=None: the columns of indicator matrices)."""
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    return {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    }


class SequenceClassifier:
    """transformers' AutoModelForSequenceClassification, with one addition. A model whose config says
    `classifier_pooling: mean` (finetune.classifier_pooling; saved in config.json, so the model is loaded as
    it was trained) classifies the mean of its last hidden states over each text's tokens instead of the
    first token through the pretrained pooler. Sentence encoders such as all-MiniLM-L6-v2 were trained to
    represent a text by that mean. transformers pools so for ModernBERT alone (a config that has the key
    itself keeps its own code), hence this, for heads of BERT's form: a dropout and a linear classifier."""

    @staticmethod
    def from_pretrained(model_dir: Any, *args: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return mean_pooled_if_configured(AutoModelForSequenceClassification.from_pretrained(model_dir, *args, **kwargs))

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return mean_pooled_if_configured(AutoModelForSequenceClassification.from_config(config, **kwargs))


def mean_pooled_if_configured(model: Any) -> Any:
    """`model` (a transformers sequence classifier) as the mean-pooling variant of its class when its config
    asks for it; else unchanged."""
    config = model.config
    if getattr(config, "classifier_pooling", "cls") == "cls" or hasattr(type(config)(), "classifier_pooling"):
        return model
    head = {name for name, _ in model.named_children()} - {model.base_model_prefix}
    if head != {"dropout", "classifier"} or not isinstance(model.classifier, torch.nn.Linear):
        raise PipelineError(
            f"finetune.classifier_pooling: mean needs a head of a dropout and a linear classifier, as BERT's; "
            f"{type(model).__name__} has another (use cls)"
        )
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        # Its output is no longer read. Kept, so the saved folder loads as any checkpoint of the architecture
        # does, and frozen: distributed training needs a gradient for every parameter it trains.
        pooler.requires_grad_(False)
    model.__class__ = mean_pooled_class(type(model))
    return model


@functools.cache
def mean_pooled_class(classifier_class: type) -> type:
    """A subclass of `classifier_class` whose forward pools by the mean; of the same name, so the saved
    config names the architecture transformers knows."""

    def forward(
        self: Any,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        from transformers.loss.loss_utils import ForSequenceClassificationLoss
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs.pop("num_items_in_batch", None)  # the loss below is a mean over the batch
        kwargs["return_dict"] = True  # (peft passes its own)
        outputs = self.base_model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = ForSequenceClassificationLoss(labels, logits, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    return type(classifier_class.__name__, (classifier_class,), {"forward": forward, "__module__": __name__})


class TextClassification(Task):
    """What every text (or text-pair) classification task shares."""

    peft_task_type: ClassVar[str] = "SEQ_CLS"
    pools_a_text: ClassVar[bool] = True
    baseline_name: ClassVar[str] = "TF-IDF + logistic regression"
    example_unit: ClassVar[str] = "texts"
    error_examples_note: ClassVar[str] = (
        "Per class, the most confident wrong predictions and the least confident right ones (score: the "
        "probability given to the predicted label, or to the label for label sets)."
    )

    def check_params(self, params: Params) -> None:
        if params.ingest.format == "conll":
            raise ValueError(f"ingest.format: task {self.name} needs a text format, not conll")
        if params.tokenize.context != "none":
            raise ValueError(f"tokenize.context: document context is for token_classification (task is {self.name})")
        if params.tokenize.mark_case:
            raise ValueError(f"tokenize.mark_case: case markers are for token_classification (task is {self.name})")

    @abstractmethod
    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The raw table's texts and labels in the normalised form, and what was dropped and repaired
        ({"dropped": counts, "repaired": counts}, for the data card)."""

    @abstractmethod
    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The training target of each row."""

    # Does every text need a label? (A multi-label text may have none: the empty set.)
    label_required: ClassVar[bool] = True

    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, Any]]]:
        raw, where = data.read_raw_table(path, params)
        kept, bad_rows = data.drop_bad_rows(raw, path, where, params, self.label_required)
        table, changes = self.normalise(kept, path, where, params)
        for kind, counts in bad_rows.items():
            changes[kind] = counts | changes.get(kind, {})
        return table, len(raw), changes

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        return data.describe(table)

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

    def auto_model_class(self) -> Any:
        return SequenceClassifier

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorWithPadding

        # Pads each batch to its longest member (rounded up to pad_to_multiple_of).
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    @abstractmethod
    def predict_frame(
        self, logits: np.ndarray, labels: list[str], thresholds: list[float] | None = None
    ) -> pd.DataFrame:
        """One row per text from its logits."""

    def example_logits(self, predictor: Any, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """One row of label logits per text (and pair): the classification head's outputs."""
        return predictor.logits(texts, pairs)

    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        # The card's temperature calibrates the scores (finetune.temperature_scaling); labels do not change.
        logits = self.example_logits(predictor, texts, pairs) / predictor.card.temperature
        return self.predict_frame(logits, predictor.labels, predictor.card.thresholds)

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        true = self.checked_truth(table, predictor.labels, source)
        logits = self.example_logits(predictor, table[data.TEXT].tolist(), data.text_pairs(table))
        return self.scored_outcomes(predictor, table, true, logits)

    def scored_outcomes(
        self, predictor: Any, table: pd.DataFrame, true: list[Any], logits: np.ndarray, measured: dict | None = None
    ) -> Outcomes:
        """The outcomes of `table` from its raw label logits, read as the served model reads them (the
        card's temperature and thresholds)."""
        frame = self.predict_frame(logits / predictor.card.temperature, predictor.labels, predictor.card.thresholds)
        targets = np.asarray(self.label_targets(table, predictor.labels))
        return Outcomes(true, self.decoded(frame), logits, targets, measured or {})

    @abstractmethod
    def checked_truth(self, table: pd.DataFrame, labels: list[str], source: str) -> list[Any]:
        """The true labels of a split table, refused with one line if the model does not know one."""

    @abstractmethod
    def decoded(self, frame: pd.DataFrame) -> list[Any]:
        """The predictions of a predict_frame, as outcomes hold them."""

    def fit_temperature(self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]]) -> float:
        logits, label_ids = validation_outputs()
        return fit_temperature(logits, label_ids, multi_label=self.problem_type == "multi_label_classification")

    def _tfidf(self, params: BaselineParams) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(ngram_range=(1, params.ngram_max), max_features=params.max_features, sublinear_tf=True)


class SingleLabelClassification(TextClassification):
    """Binary or multi-class classification: one label per text, cross-entropy loss."""

    name: ClassVar[str] = "single_label_classification"
    description: ClassVar[str] = "binary or multi-class: one label per text (or text pair)"
    problem_type: ClassVar[str] = "single_label_classification"
    headline_metric: ClassVar[str] = "accuracy"
    summary_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1")

    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return data.normalise_single_labels(raw, path, where, params)

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        """Declared `ingest.labels` or score classes as given; otherwise the sorted labels of all files."""
        if params.labels is not None:
            return list(params.labels)
        if params.score_to_label is not None:
            return list(params.score_to_label.names)
        return sorted({str(label) for table in tables for label in table[data.LABEL].cat.categories})

    def finalise(self, table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        table[data.LABEL] = pd.Categorical(table[data.LABEL].astype(str), categories=labels)
        return table

    def strata(self, table: pd.DataFrame) -> pd.Series:
        return table[data.LABEL].astype(str)

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """The class id of each row."""
        index = {label: i for i, label in enumerate(labels)}
        return table[data.LABEL].astype(str).map(index).tolist()

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        pred = logits.argmax(axis=-1)
        return {
            "accuracy": float(accuracy_score(label_ids, pred)),
            "macro_f1": float(f1_score(label_ids, pred, average="macro", zero_division=0)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        return balanced_weights(np.asarray(targets).ravel(), n_labels)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        return cross_entropy_sum(logits, labels, weights, label_smoothing)

    def checked_truth(self, table: pd.DataFrame, labels: list[str], source: str) -> list[Any]:
        actual = table[data.LABEL].astype(str)
        unknown = ~actual.isin(labels)
        if unknown.any():
            raise PipelineError(f"{source}: label '{actual[unknown].iloc[0]}' is not one the model predicts {labels}")
        return actual.tolist()

    def decoded(self, frame: pd.DataFrame) -> list[Any]:
        return frame["label"].tolist()

    def error_examples(
        self, texts: list[str], result: Outcomes, probabilities: np.ndarray | None, labels: list[str], k: int
    ) -> pd.DataFrame:
        """By gold class: the wrong predictions with the highest probability, the right ones with the lowest."""
        frame = pd.DataFrame(
            {"text": texts, "gold": result.true, "predicted": result.pred, "score": probabilities.max(axis=1)}
        )
        rows = []
        for _, group in frame.groupby("gold", sort=True):
            wrong = group[group["gold"] != group["predicted"]].nlargest(k, "score")
            right = group[group["gold"] == group["predicted"]].nsmallest(k, "score")
            rows += [wrong.assign(kind="most confident wrong"), right.assign(kind="least confident right")]
        out = pd.concat(rows, ignore_index=True) if rows else frame.iloc[:0].assign(kind=[])
        return out.assign(**{"class": out["gold"]})[["kind", "class", "text", "gold", "predicted", "score"]]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def reliability_points(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-label calibration: the winning probability, and whether the winner is the true class."""
        return probabilities.max(axis=1), (probabilities.argmax(axis=1) == np.asarray(targets)).astype(float)

    def confusion_pairs(self, true: list[Any], pred: list[Any]) -> pd.DataFrame:
        return pd.DataFrame({"actual": true, "predicted": pred})

    def summary_scores(self, true: list[str], pred: list[str], labels: list[str]) -> dict[str, float]:
        """Accuracy and macro/micro/weighted F1 from one confusion matrix: the definitions of sklearn's
        accuracy_score and f1_score (zero_division=0), in one pass instead of four, because bootstrap
        intervals and paired tests compute them thousands of times (tests check they agree)."""
        matrix = confusion_matrix(true, pred, labels=labels).astype(np.float64)
        tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
        denominator = support + predicted  # 2tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        total = matrix.sum()
        accuracy = float(tp.sum() / total) if total else 0.0
        return {
            "accuracy": accuracy,
            "macro_f1": float(f1.mean()),
            "micro_f1": accuracy,  # every label counted: micro precision = recall = accuracy
            "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
        }

    def test_metrics(self, true: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
        """Accuracy, macro/micro/weighted F1, precision/recall/F1/support per class, confusion matrix."""
        metrics: dict[str, Any] = self.summary_scores(true, pred, labels)
        metrics["per_class"] = per_class(true, pred, labels, labels)
        metrics["confusion_matrix"] = confusion_matrix(true, pred, labels=labels).tolist()
        return metrics

    def predict_frame(
        self, logits: np.ndarray, labels: list[str], thresholds: list[float] | None = None
    ) -> pd.DataFrame:
        """The predicted label, its probability, and the probability of every label."""
        probs = softmax(logits)
        ids = probs.argmax(axis=-1)
        frame = pd.DataFrame(
            {"label": [labels[i] for i in ids], "score": probs[np.arange(len(ids)), ids].astype(float)}
        )
        for index, label in enumerate(labels):
            frame[f"score_{label}"] = probs[:, index].astype(float)
        return frame

    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        pipeline = make_pipeline(self._tfidf(params), LogisticRegression(C=params.C, max_iter=2000))
        pipeline.fit(data.raw_texts(train), train[data.LABEL].astype(str))  # a pair: both texts in one bag of words
        return test[data.LABEL].astype(str).tolist(), pipeline.predict(data.raw_texts(test)).tolist()


class MultiLabelClassification(TextClassification):
    """0..n labels per text: one sigmoid per label, binary cross-entropy loss, a decision threshold per
    label (one global value, or tuned on the validation set: `finetune.tune_thresholds`)."""

    name: ClassVar[str] = "multi_label_classification"
    description: ClassVar[str] = "0..n labels per text (a list column or a delimited string)"
    problem_type: ClassVar[str] = "multi_label_classification"  # transformers then uses BCEWithLogitsLoss
    headline_metric: ClassVar[str] = "micro_f1"
    summary_metrics: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")
    validation_metrics_names: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "subset_accuracy")
    confusion_none: ClassVar[str | None] = "none"  # a label only one side has is paired with "none"
    label_required: ClassVar[bool] = False

    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return data.normalise_label_sets(raw, path, where, params)

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        if params.labels is not None:
            return list(params.labels)
        return sorted({label for table in tables for label in table.attrs["labels"]})

    def strata(self, table: pd.DataFrame) -> pd.Series:
        """The rarest label of each set ("none" for an empty set): every label lands in every split without
        iterative stratification, at the cost of balancing co-occurrences only roughly."""
        frequency = table[data.LABEL].explode().value_counts()
        return table[data.LABEL].map(
            lambda labels: min(labels, key=lambda label: (frequency[label], label)) if len(labels) else "none"
        )

    def label_targets(self, table: pd.DataFrame, labels: list[str]) -> list[Any]:
        """A multi-hot vector of floats per row (what BCE loss expects)."""
        return [[1.0 if label in set(row) else 0.0 for label in labels] for row in table[data.LABEL]]

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        pred = (sigmoid(logits) >= threshold).astype(int)
        true = label_ids.astype(int)
        return {
            "micro_f1": float(f1_score(true, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(true, pred)),
        }

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        """Negatives / positives of each label: BCE's pos_weight."""
        positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
        return (len(targets) - positives) / np.maximum(positives, 1)

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        targets = labels.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=weights, reduction="sum"
        )
        return loss, labels.numel()

    def decision_thresholds(
        self, validation_outputs: Callable[[], tuple[np.ndarray, np.ndarray]], params: FinetuneParams, n_labels: int
    ) -> list[float] | None:
        """`finetune.threshold` for every label, or with `finetune.tune_thresholds` the best per label on the
        validation split (with the best weights)."""
        if not params.tune_thresholds:
            return [params.threshold] * n_labels
        return self.tune_thresholds(*validation_outputs())

    def tune_thresholds(self, logits: np.ndarray, label_ids: np.ndarray) -> list[float]:
        """Per label, the threshold on a 0.05 grid with the best validation F1 (ties: the one nearest 0.5)."""
        grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
        probs = sigmoid(logits)
        best = []
        for j in range(probs.shape[1]):
            scores = [
                f1_score(label_ids[:, j].astype(int), (probs[:, j] >= t).astype(int), zero_division=0) for t in grid
            ]
            top = max(scores)
            best.append(float(min((t for t, f in zip(grid, scores) if f == top), key=lambda t: abs(t - 0.5))))
        return best

    def checked_truth(self, table: pd.DataFrame, labels: list[str], source: str) -> list[Any]:
        true = [list(row) for row in table[data.LABEL]]
        unknown = {label for row in true for label in row} - set(labels)
        if unknown:
            raise PipelineError(f"{source}: label '{sorted(unknown)[0]}' is not one the model predicts {labels}")
        return true

    def decoded(self, frame: pd.DataFrame) -> list[Any]:
        return [list(labels) for labels in frame["labels"]]

    def error_examples(
        self, texts: list[str], result: Outcomes, probabilities: np.ndarray | None, labels: list[str], k: int
    ) -> pd.DataFrame:
        """By label: its wrong decisions (given or withheld) with the most extreme probability, its right
        ones nearest the threshold; score is the probability of the label."""
        rows = []
        for j, label in enumerate(labels):
            has = np.array([label in t for t in result.true])
            said = np.array([label in p for p in result.pred])
            certainty = np.abs(probabilities[:, j] - 0.5)
            frame = pd.DataFrame(
                {
                    "text": texts,
                    "gold": np.where(has, label, "-"),
                    "predicted": np.where(said, label, "-"),
                    "score": probabilities[:, j],
                    "certainty": certainty,
                }
            )
            wrong = frame[has != said].nlargest(k, "certainty").assign(kind="most confident wrong")
            right = frame[has == said].nsmallest(k, "certainty").assign(kind="least confident right")
            rows += [wrong.assign(**{"class": label}), right.assign(**{"class": label})]
        return pd.concat(rows, ignore_index=True)[["kind", "class", "text", "gold", "predicted", "score"]]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def reliability_points(self, probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class-wise calibration: every label's probability, and whether the label is there."""
        return probabilities.ravel(), np.asarray(targets, dtype=float).ravel()

    def confusion_pairs(self, true: list[Any], pred: list[Any]) -> pd.DataFrame:
        pairs = [
            (label if label in t else "none", label if label in p else "none")
            for t, p in zip(true, pred)
            for label in sorted(set(t) | set(p))
        ]
        return pd.DataFrame(pairs, columns=["actual", "predicted"])

    def test_metrics(self, true: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict[str, Any]:
        """Micro/macro/weighted F1, subset accuracy (the whole set right) and per-label P/R/F1/support."""
        from sklearn.preprocessing import MultiLabelBinarizer

        binarizer = MultiLabelBinarizer(classes=labels).fit([labels])
        y_true, y_pred = binarizer.transform(true), binarizer.transform(pred)
        metrics: dict[str, Any] = {"subset_accuracy": float(accuracy_score(y_true, y_pred))}
        for average in ("micro", "macro", "weighted"):
            metrics[f"{average}_f1"] = float(f1_score(y_true, y_pred, average=average, zero_division=0))
        metrics["per_class"] = per_class(y_true, y_pred, labels)
        return metrics

    def predict_frame(
        self, logits: np.ndarray, labels: list[str], thresholds: list[float] | None = None
    ) -> pd.DataFrame:
        """The labels whose probability reaches their threshold, and every probability."""
        probs = sigmoid(logits)
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
        frame = pd.DataFrame({"labels": [[labels[j] for j in np.flatnonzero(row >= cut)] for row in probs]})
        for index, label in enumerate(labels):
            frame[f"score_{label}"] = probs[:, index].astype(float)
        return frame

    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        """TF-IDF + one logistic regression per label."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import MultiLabelBinarizer

        binarizer = MultiLabelBinarizer(classes=labels).fit([labels])
        pipeline = make_pipeline(
            self._tfidf(params), OneVsRestClassifier(LogisticRegression(C=params.C, max_iter=2000))
        )
        pipeline.fit(data.raw_texts(train), binarizer.transform(train[data.LABEL].map(list)))
        predicted = [list(row) for row in binarizer.inverse_transform(pipeline.predict(data.raw_texts(test)))]
        return test[data.LABEL].map(list).tolist(), predicted


def balanced_weights(class_ids: np.ndarray, n_labels: int) -> np.ndarray:
    """n / (classes * count) per class, sklearn's "balanced"; positions with IGNORE_INDEX do not count."""
    counts = np.bincount(class_ids[class_ids != IGNORE_INDEX], minlength=n_labels).astype(np.float64)
    return counts.sum() / (n_labels * np.maximum(counts, 1))


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over every labelled position (sequences: one per text; tokens: per word)."""
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        weight=weights,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return loss, int((labels != IGNORE_INDEX).sum())
