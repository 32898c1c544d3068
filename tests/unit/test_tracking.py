"""pipeline.tracking: the project's default MLflow store, and what it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.errors import PipelineError


def test_a_copied_project_does_not_use_the_artifact_folder_of_the_one_it_was_copied_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    monkeypatch.chdir(first)
    experiment = tracking.configure("sentiment-finetune")
    assert tracking.configure("sentiment-finetune") == experiment  # its own store, again: fine
    shutil.copytree(first, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri exported it: a new process has none
    with pytest.raises(PipelineError) as refused:
        tracking.configure("sentiment-finetune")
    message = str(refused.value)
    assert message.startswith(f"{copy / 'mlflow.db'}: this MLflow store keeps the artifacts of experiment")
    elsewhere = (first / "mlartifacts").as_uri()
    assert f"in {elsewhere}, not beside it in mlartifacts/ (a copied or moved project)" in message
