"""Predicting with a saved model folder: used by evaluate, by the served MLflow model and by batch
prediction, so every consumer decodes outputs the same way.

Texts are sorted by length and padded per batch, as in training, which keeps inference on short texts
fast. Needs only the model folder (weights, tokenizer, training.json), never the repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqeval.metrics.sequence_labeling import get_entities

from stages.encoding import encode_texts, in_context, pool
from safetensors import SafetensorError

from stages import methods
from stages.errors import PipelineError
from stages.tasks import get_task, softmax


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
        self.thresholds: list[float] | None = info.get("thresholds")  # multi-label decision thresholds
        self.truncation: str = info.get("truncation", "head")  # long texts are cut as in training
        self.stride: int = info.get("stride", 0)
        self.pooling: str = info.get("pooling", "mean")
        self.context: str = info.get("context", "none")  # token tasks: sentences read inside their document
        self.mark_case: bool = info.get("mark_case", False)  # token tasks: case markers as in training
        self.text_pair: bool = info.get("text_pair", False)  # reads (text, text pair) inputs
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        try:
            self.model = methods.load(model_dir, self.task.auto_model_class())
        except (OSError, ValueError, SafetensorError) as exc:  # missing, incompatible or corrupt weights
            raise PipelineError(f"{model_dir}: cannot load the model: {str(exc).splitlines()[0]}") from None

    @torch.inference_mode()
    def _forward(self, encoded: list[list[int]]) -> list[np.ndarray]:
        """Logits of each encoded example (one row per text, or per token for token tasks), in input order."""
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out: list[np.ndarray] = [np.empty(0)] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = self.model(**batch).logits.float().numpy()
            for row, index in enumerate(chunk):
                out[index] = logits[row, : len(encoded[index])] if logits.ndim == 3 else logits[row]
        return out

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Sequence tasks: one row of logits per text (per text and its pair, for a pair model)."""
        if self.text_pair != (pairs is not None):
            raise PipelineError("this model reads text pairs: give a second text for each" if self.text_pair
                                else "this model reads single texts, not pairs")
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)  # the tokenizer refuses []
        encoded, source = encode_texts(self.tokenizer, texts, self.max_length, self.truncation, self.stride, pairs)
        windows = np.stack(self._forward(encoded))
        return windows if self.truncation != "chunk" else pool(windows, source, len(texts), self.pooling)

    def predict_words(self, sentences: Sequence[Sequence[str]], documents: Sequence[object] | None = None) -> list[list[str]]:
        """Token tasks: one tag per word, read off each word's first sub-token; words cut off by
        max_length get "O". With `documents` (a model trained with document context), each sentence is
        read inside its neighbours of the same document, as in training."""
        return [[tag for tag, _ in words] for words in self._tag_words(sentences, documents)]

    def _tag_words(self, sentences: Sequence[Sequence[str]], documents: Sequence[object] | None = None) -> list[list[tuple[str, float]]]:
        if not len(sentences):
            return []
        windows = in_context(sentences, documents if self.context == "document" else None, self.tokenizer,
                             self.max_length, self.mark_case)
        encoded = self.tokenizer([words for words, _ in windows], is_split_into_words=True, truncation=True, max_length=self.max_length)
        logits = self._forward(encoded["input_ids"])
        tagged = []
        for index, words in enumerate(sentences):
            tags = [("O", 1.0)] * len(words)
            offset, previous = windows[index][1], None
            for position, word in enumerate(encoded.word_ids(index)):
                if word is not None and word != previous and offset <= word < offset + len(words):
                    probs = softmax(logits[index][position])
                    tags[word - offset] = (self.labels[int(probs.argmax())], float(probs.max()))
                previous = word
            tagged.append(tags)
        return tagged

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> pd.DataFrame:
        """Sequence tasks: label, score and the probability of every label per text (and pair). Token
        tasks: the entity spans found in each text (type, text, character start/end, mean word probability)."""
        if self.task.name != "token_classification":
            return self.task.predict_frame(self.logits(texts, pairs), self.labels, self.thresholds)
        spans = [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in texts]
        tagged = self._tag_words([[word for word, _, _ in words] for words in spans])
        entities = []
        for text, words, tags in zip(texts, spans, tagged):
            found = []
            for kind, first, last in get_entities([tag for tag, _ in tags]):
                start, end = words[first][1], words[last][2]
                found.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                              "score": float(np.mean([p for _, p in tags[first : last + 1]]))})
            entities.append(found)
        return pd.DataFrame({"entities": entities})


def score(predictor: Predictor, table: pd.DataFrame, source: str = "test split") -> tuple[dict, pd.DataFrame]:
    """The task's test metrics of `predictor` on a split table, and the (actual, predicted) pairs for the
    confusion matrix. Used by evaluate and by promotion's re-scoring of a champion."""
    return predictor.task.score(predictor, table, source)


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
