"""Predicting with a saved model folder: used by evaluate, by the served MLflow model and by batch
prediction, so every consumer decodes outputs the same way.

Texts are sorted by length and padded per batch, as in training, which keeps inference on short texts
fast. Needs only the model folder (weights, tokenizer, training.json), never the repository.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages import data
from stages.errors import PipelineError
from stages.tasks import get_task


class Predictor:
    def __init__(self, model_dir: Path, batch_size: int = 64) -> None:
        from transformers import AutoTokenizer

        info_file = model_dir / "training.json"
        if not info_file.is_file():
            raise PipelineError(f"{model_dir}: not a fine-tuned model folder (no training.json)")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        self.task = get_task(info["task"])
        self.labels: list[str] = info["labels"]
        self.max_length: int = info["max_length"]
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        try:
            self.model = self.task.auto_model_class().from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{model_dir}: cannot load the model: {str(exc).splitlines()[0]}") from None
        self.model.eval()

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.num_labels), dtype=np.float32)
        if not len(texts):
            return out  # the tokenizer cannot encode an empty batch
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            out[chunk] = self.model(**batch).logits.float().numpy()
        return out

    def predict(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text: the predicted label, its probability, and the probability of every label."""
        logits = self.logits(texts)
        ids, scores = self.task.decode(logits)
        probs = self.task.probabilities(logits)
        frame = pd.DataFrame({"label": [self.labels[i] for i in ids], "score": scores.astype(float)})
        for index, label in enumerate(self.labels):
            frame[f"score_{label}"] = probs[:, index].astype(float)
        return frame


def score(predictor: Predictor, table: pd.DataFrame, source: str = "test split") -> tuple[dict, pd.DataFrame]:
    """The task's test metrics of `predictor` on a split table (text + label columns), and the
    (actual, predicted) label pairs. Used by evaluate and by promotion's re-evaluation of a champion."""
    label_ids = {label: i for i, label in enumerate(predictor.labels)}
    actual = table[data.LABEL].astype(str)
    unknown = ~actual.isin(label_ids)
    if unknown.any():
        raise PipelineError(f"{source}: label '{actual[unknown].iloc[0]}' is not one the model predicts {predictor.labels}")
    true_ids = actual.map(label_ids).to_numpy()
    pred_ids, _ = predictor.task.decode(predictor.logits(table[data.TEXT].tolist()))
    metrics = predictor.task.test_metrics(true_ids, pred_ids, predictor.labels)
    pairs = pd.DataFrame({"actual": actual.to_numpy(), "predicted": [predictor.labels[i] for i in pred_ids]})
    return metrics, pairs


def load_predictor(model: str) -> Predictor:
    """A Predictor from a model folder, or from an MLflow model URI (`models:/NAME@alias`, `runs:/...`)."""
    if "://" not in model and ":/" not in model:
        path = Path(model)
        if not path.is_dir():
            raise PipelineError(f"{model}: no such model folder (or give an MLflow URI such as models:/NAME@champion)")
        return Predictor(path)
    import mlflow

    try:
        loaded = mlflow.pyfunc.load_model(model)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{model}: cannot load from MLflow: {str(exc).splitlines()[0]}") from None
    return loaded.unwrap_python_model().predictor
