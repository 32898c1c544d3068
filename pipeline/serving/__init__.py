"""The MLflow pyfunc model that the registry holds and `mlflow models serve` runs.

Self-contained: the model folder travels as an artifact and this package as the model's code, so
`mlflow.pyfunc.load_model("models:/NAME@alias")` works without the repository.

Requests are bounded, so a few huge requests cannot occupy the workers: at most
`PIPELINE_MAX_REQUEST_TEXTS` inputs (default 1,000) and `PIPELINE_MAX_REQUEST_CHARS` characters in all
(default 1,000,000) per request, read from the server's environment when the model loads; more is a 400
naming the limit. Empty or whitespace-only texts are refused here as in batch prediction (400 naming the
input). Longer texts are cut to the model's max_length tokens, as in training. A text generation model
takes sampling params per request ({"inputs": [...], "params": {"temperature": 0.7, "top_p": 0.9, "seed": 1,
"max_new_tokens": 64}}); greedy, at the trained length, without them. A decoder's request is bounded by the
tokens it may generate: inputs x max_new_tokens at most `PIPELINE_MAX_REQUEST_NEW_TOKENS` (default 16,384),
refused with a 400 naming the bound before any token is generated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.prediction.inference import Predictor
from pipeline.prediction.runtimes import ONNX_FILES, TORCH
from pipeline.registry import artifacts
from pipeline.tasks.generation.generating import Sampling

MAX_TEXTS = "PIPELINE_MAX_REQUEST_TEXTS"
MAX_CHARS = "PIPELINE_MAX_REQUEST_CHARS"
MAX_NEW_TOKENS = "PIPELINE_MAX_REQUEST_NEW_TOKENS"


def _bad_request(message: str) -> mlflow.exceptions.MlflowException:
    return mlflow.exceptions.MlflowException.invalid_parameter_value(message)  # the server answers 400


class _ServedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        # The runtime evaluate chose (versions registered before ONNX export have none: PyTorch).
        self.model_dir = Path(context.artifacts["model_dir"])
        self.export_dir = Path(context.artifacts["onnx_dir"]) if "onnx_dir" in context.artifacts else None
        runtime = (context.model_config or {}).get("runtime", TORCH)
        if runtime in ONNX_FILES and self.export_dir is None:
            raise PipelineError(f"this version carries no ONNX graphs for runtime {runtime} (registered with torch)")
        # What this runtime reads must be what was registered (the ONNX graphs only where they run).
        artifacts.verify(context.artifacts, ["model_dir", *(["onnx_dir"] if runtime in ONNX_FILES else [])])
        self.predictor = Predictor(self.model_dir, runtime=runtime, export_dir=self.export_dir)
        self.max_texts = int(os.environ.get(MAX_TEXTS, 1000))
        self.max_chars = int(os.environ.get(MAX_CHARS, 1_000_000))
        self.max_new_tokens = int(os.environ.get(MAX_NEW_TOKENS, 16_384))

    def _check(self, texts: list[list[str]]) -> None:
        """`texts`: the strings of each input (one, or a pair)."""
        if len(texts) > self.max_texts:
            raise _bad_request(f"{len(texts)} inputs in one request; the limit is {self.max_texts} ({MAX_TEXTS})")
        chars = sum(len(t) for strings in texts for t in strings)
        if chars > self.max_chars:
            raise _bad_request(f"{chars} characters in one request; the limit is {self.max_chars} ({MAX_CHARS})")
        empty = next((i for i, strings in enumerate(texts) if any(not t.strip() for t in strings)), None)
        if empty is not None:
            raise _bad_request(f"input {empty}: empty text")

    def _check_generation(self, inputs: int, sampling: Sampling) -> None:
        """A decoder generates up to max_new_tokens per input: the request's total is bounded before it runs."""
        prompt = self.predictor.encoding.prompt
        if prompt is None:  # an encoder: nothing is generated
            return
        limit = sampling.new_tokens(prompt.max_new_tokens)
        if inputs * limit > self.max_new_tokens:
            raise _bad_request(
                f"{inputs} inputs x {limit} new tokens in one request; the limit is {self.max_new_tokens} "
                f"generated tokens ({MAX_NEW_TOKENS})"
            )


class TextModel(_ServedModel):
    # The type hint is the model's signature: MLflow checks inputs against it (a non-string is refused
    # before predict runs), and `/invocations` accepts {"inputs": ["a text", ...]}.
    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        self._check([[text] for text in model_input])
        try:
            # A text generation model's signature has these params (evaluate); MLflow may hand numpy scalars.
            sampling = Sampling(**{k: v.item() if isinstance(v, np.generic) else v for k, v in (params or {}).items()})
        except (TypeError, ValueError) as exc:
            raise _bad_request(f"params: {exc}") from None
        self._check_generation(len(model_input), sampling)
        return self.predictor.with_sampling(sampling).predict(model_input)


class TextPairModel(_ServedModel):
    """A model trained on text pairs: `/invocations` takes {"inputs": [["first text", "second text"], ...]}."""

    def predict(self, model_input: list[list[str]], params: dict[str, Any] | None = None) -> pd.DataFrame:
        pairs = [list(pair) for pair in model_input]
        bad = next((i for i, pair in enumerate(pairs) if len(pair) != 2), None)
        if bad is not None:
            raise _bad_request(f"input {bad}: a text pair is two texts, got {len(pairs[bad])}")
        self._check(pairs)
        return self.predictor.predict([a for a, _ in pairs], [b for _, b in pairs])
