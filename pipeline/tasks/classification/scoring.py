"""Scoring for sequence classification: test metrics from one confusion matrix, calibration points,
the errors worth reading, and TF-IDF + logistic regression as the classical baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline import data
from pipeline.tasks.base import Outcomes, Scoring
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec, TextClassificationSpec
from pipeline.training.calibration import sigmoid, softmax

if TYPE_CHECKING:
    from pipeline.schema import BaselineParams


def per_class(true: Any, pred: Any, classes: list[str], labels: list[Any] | None = None) -> dict[str, dict[str, float]]:
    """precision/recall/F1/support per class (labels=None: the columns of indicator matrices)."""
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    return {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    }


class TextClassificationScoring(TextClassificationSpec, Scoring):
    def _tfidf(self, params: BaselineParams) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(ngram_range=(1, params.ngram_max), max_features=params.max_features, sublinear_tf=True)


class SingleLabelScoring(SingleLabelSpec, TextClassificationScoring):
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

    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        pipeline = make_pipeline(self._tfidf(params), LogisticRegression(C=params.C, max_iter=2000))
        pipeline.fit(data.raw_texts(train), train[data.LABEL].astype(str))  # a pair: both texts in one bag of words
        return test[data.LABEL].astype(str).tolist(), pipeline.predict(data.raw_texts(test)).tolist()


class MultiLabelScoring(MultiLabelSpec, TextClassificationScoring):
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
