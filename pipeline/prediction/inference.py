"""Predicting with a saved model folder: used by evaluate, by the served MLflow model and by batch
prediction, so every consumer decodes outputs the same way.

Texts are sorted by length and padded per batch, as in training, which keeps inference on short texts
fast. Needs only the model folder (weights, tokenizer, model card), never the repository.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError

from pipeline.card import EncodingSpec, ModelCard
from pipeline.data.encoding import encode_texts, pool
from pipeline.errors import PipelineError
from pipeline.methods.base import load_model
from pipeline.prediction.runtimes import ONNX_FILES, RUNTIMES, TORCH, OnnxSession
from pipeline.tasks.generation.generating import GREEDY, Sampling
from pipeline.tasks.prediction import PREDICTIONS
from pipeline.tasks.training import HOOKS
from pipeline.training.modeling import check_model_folder, require_finite_weights


class Predictor:
    """A fine-tuned model folder ready to predict: its card says the task, labels and how texts were encoded."""

    def __init__(
        self, model_dir: Path, batch_size: int = 64, runtime: str = TORCH, export_dir: Path | None = None
    ) -> None:
        """`runtime`: what runs the forward pass, `torch` (the folder's weights) or an ONNX Runtime graph
        from `export_dir` (`onnx`, `onnx-int8`); everything else is the same code."""
        from transformers import AutoTokenizer

        self.card = ModelCard.read(model_dir)
        check_model_folder(model_dir)
        self.task = PREDICTIONS.for_task(self.card.task)
        self.model_class = HOOKS.for_task(self.card.task).auto_model_class()  # the class it was trained as
        self.labels: list[str] = self.card.labels
        self.encoding: EncodingSpec = self.card.encoding  # long texts are cut and pooled as in training
        self.batch_size = batch_size
        self.runtime = runtime
        self.sampling = GREEDY  # how free text is generated (text_generation); set per request by with_sampling
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            if runtime == TORCH:
                self.model = load_model(model_dir, self.model_class)
        except (OSError, ValueError, SafetensorError) as exc:  # missing, incompatible or corrupt weights
            raise PipelineError(f"{model_dir}: cannot load the model: {str(exc).splitlines()[0]}") from None
        if runtime == TORCH:
            require_finite_weights(self.model, f"{model_dir}: the model")
        elif runtime in ONNX_FILES:
            if export_dir is None:
                raise PipelineError(f"runtime {runtime}: no ONNX export folder given")
            self.session = OnnxSession(export_dir / ONNX_FILES[runtime])
        else:
            raise PipelineError(f"unknown runtime '{runtime}' (one of {', '.join(RUNTIMES)})")

    @property
    def text_pair(self) -> bool:
        """Whether the model reads (text, text pair) inputs."""
        return self.encoding.text_pair

    @torch.inference_mode()
    def forward(self, encoded: list[list[int]]) -> list[np.ndarray]:
        """Logits of each encoded example (one row per text, or per token for token tasks), in input order."""
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out: list[np.ndarray] = [np.empty(0)] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="np")
            if self.runtime == TORCH:
                logits = self.model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy()
            else:
                logits = self.session(batch["input_ids"], batch["attention_mask"])
            for row, index in enumerate(chunk):
                out[index] = logits[row, : len(encoded[index])] if logits.ndim == 3 else logits[row]
        return out

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Sequence tasks: one row of logits per text (per text and its pair, for a pair model)."""
        spec = self.encoding
        if spec.text_pair != (pairs is not None):
            raise PipelineError(
                "this model reads text pairs: give a second text for each"
                if self.text_pair
                else "this model reads single texts, not pairs"
            )
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)  # the tokenizer refuses []
        encoded, source = encode_texts(
            self.tokenizer, texts, spec.max_length, spec.truncation, spec.stride, pairs, spec.max_chars
        )
        windows = np.stack(self.forward(encoded))
        return windows if spec.truncation != "chunk" else pool(windows, source, len(texts), spec.pooling)

    def with_sampling(self, sampling: Sampling) -> Predictor:
        """This predictor generating free text as `sampling` says (the weights are shared, not copied, so a
        request's choice never leaks into another's)."""
        chosen = copy.copy(self)
        chosen.sampling = sampling
        return chosen

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per text (and pair), as the task decodes it: label and scores, label sets, or entities."""
        return self.task.predict(self, list(texts), list(pairs) if pairs is not None else None)


def load_predictor(model: str, runtime: str | None = None) -> Predictor:
    """A Predictor from a model folder, or from an MLflow model URI (`models:/NAME@alias`, `runs:/...`).
    `runtime`: None = the registered version's own (PyTorch for a folder); `onnx`/`onnx-int8` read the
    graphs the version carries, or for a folder the export stage's folder beside it (models/onnx)."""
    if "://" not in model and ":/" not in model:
        path = Path(model)
        if not path.is_dir():
            raise PipelineError(f"{model}: no such model folder (or give an MLflow URI such as models:/NAME@champion)")
        return Predictor(path, runtime=runtime or TORCH, export_dir=path.parent / "onnx")
    import mlflow

    try:
        # An explicit runtime replaces the registered one before the model loads, so what only the
        # registered runtime reads (the int8 graph) need not be there for another (PyTorch).
        served = mlflow.pyfunc.load_model(model, model_config={"runtime": runtime} if runtime else None)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{model}: cannot load from MLflow: {str(exc).splitlines()[0]}") from None
    except PipelineError as exc:
        raise PipelineError(f"{model}: {exc}") from None
    return served.unwrap_python_model().predictor
