"""Prediction for sequence classification: label logits read as the served model reads them (the model
card's temperature and thresholds) into a label and its scores, or a label set."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.tasks.base import Outcomes, Prediction
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec, TextClassificationSpec
from pipeline.training.calibration import sigmoid, softmax


class TextClassificationPrediction(TextClassificationSpec, Prediction):
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


class SingleLabelPrediction(SingleLabelSpec, TextClassificationPrediction):
    def checked_truth(self, table: pd.DataFrame, labels: list[str], source: str) -> list[Any]:
        actual = table[data.LABEL].astype(str)
        unknown = ~actual.isin(labels)
        if unknown.any():
            raise PipelineError(f"{source}: label '{actual[unknown].iloc[0]}' is not one the model predicts {labels}")
        return actual.tolist()

    def decoded(self, frame: pd.DataFrame) -> list[Any]:
        return frame["label"].tolist()

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


class MultiLabelPrediction(MultiLabelSpec, TextClassificationPrediction):
    def checked_truth(self, table: pd.DataFrame, labels: list[str], source: str) -> list[Any]:
        true = [list(row) for row in table[data.LABEL]]
        unknown = {label for row in true for label in row} - set(labels)
        if unknown:
            raise PipelineError(f"{source}: label '{sorted(unknown)[0]}' is not one the model predicts {labels}")
        return true

    def decoded(self, frame: pd.DataFrame) -> list[Any]:
        return [list(labels) for labels in frame["labels"]]

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
