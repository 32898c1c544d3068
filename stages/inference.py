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
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.zeros((len(encoded), self.model.config.num_labels), dtype=np.float32)
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
