"""The MLflow pyfunc model that the registry holds and `mlflow models serve` runs.

Self-contained: the model folder travels as an artifact and this package as the model's code, so
`mlflow.pyfunc.load_model("models:/NAME@alias")` works without the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.inference import Predictor


class TextModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(Path(context.artifacts["model_dir"]))

    # The type hint is the model's signature: MLflow checks inputs against it (a non-string is refused
    # before predict runs), and `/invocations` accepts {"inputs": ["a text", ...]}.
    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict(model_input)


class TextPairModel(mlflow.pyfunc.PythonModel):
    """A model trained on text pairs: `/invocations` takes {"inputs": [["first text", "second text"], ...]}."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(Path(context.artifacts["model_dir"]))

    def predict(self, model_input: list[list[str]], params: dict[str, Any] | None = None) -> pd.DataFrame:
        pairs = [list(pair) for pair in model_input]
        bad = next((i for i, pair in enumerate(pairs) if len(pair) != 2), None)
        if bad is not None:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"input {bad}: a text pair is two texts, got {len(pairs[bad])}"
            )
        return self.predictor.predict([a for a, _ in pairs], [b for _, b in pairs])
