"""Fine-tuning methods (`finetune.method`) on a tiny random BERT: what trains, what stays frozen, and that
the saved model — from its folder and from the MLflow registry — gives the logits of the trained one."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from helpers import expect_user_error, set_params, without_onnx_export
from pipeline import paths, tracking
from pipeline.card import CARD_FILE, ModelCard
from pipeline.methods.base import folder_bytes
from pipeline.methods.registry import get_method
from pipeline.prediction.inference import Predictor, load_predictor
from stages import evaluate, finetune

TEXTS = ["a great and wonderful film", "dull boring plot", "the cast", "superb charming story but tedious"]

# Trainable parameter names each method may have, besides the task head; everything else must stay frozen.
ADAPTER_NAMES = {
    "lora": r"\.lora_[AB]\.",
    "dora": r"\.lora_([AB]|magnitude_vector)\.",
    "adalora": r"\.lora_[ABE]\.",
    "prefix": r"^prompt_encoder\.",
    "ia3": r"\.ia3_l\.",
}
HEAD = r"(^classifier\.|modules_to_save)"

METHOD_PARAMS = {
    "full": {},
    "full_frozen_word_embeddings": {"finetune.method": "full", "finetune.freeze_word_embeddings": True},
    "freeze": {},
    "top_1": {"finetune.method": "freeze", "finetune.freeze.top_k_layers": 1},
    "lora": {"finetune.lora.r": 4},
    "dora": {"finetune.dora.r": 4},
    "adalora": {"finetune.adalora.init_r": 6, "finetune.adalora.target_r": 2, "finetune.adalora.delta_t": 2},
    "prefix": {"finetune.prefix.num_virtual_tokens": 5},
    "ia3": {},
    "lora_merged": {"finetune.method": "lora", "finetune.merge_adapter": True},
}


class Recorder:
    """Wraps the method's prepare and save to keep the model as training starts (a copy of every
    parameter) and the model the saved folder should reproduce."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
        cls = type(get_method(method))
        prepare, save = cls.prepare, cls.save

        def recording_prepare(method_self, *args, **kwargs):
            self.model = prepare(method_self, *args, **kwargs)
            self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            return self.model

        def recording_save(method_self, model, *args, **kwargs):
            self.trained = copy.deepcopy(model)  # merging rewrites the model in place
            self.saved = save(method_self, model, *args, **kwargs)
            return self.saved

        monkeypatch.setattr(cls, "prepare", recording_prepare)
        monkeypatch.setattr(cls, "save", recording_save)

    def changed(self) -> set[str]:
        return {n for n, p in self.trained.named_parameters() if not torch.equal(p.detach(), self.initial[n])}

    def trainable(self) -> set[str]:
        return {n for n, p in self.trained.named_parameters() if p.requires_grad}


def in_memory_logits(model: torch.nn.Module, texts: list[str]) -> np.ndarray:
    """Logits of `model` on `texts`, encoded the way the saved folder's Predictor encodes them."""
    predictor = Predictor(paths.MODEL)
    predictor.model = model.eval()
    return predictor.logits(texts)


@pytest.mark.parametrize("variant", list(METHOD_PARAMS))
def test_method_trains_what_it_says_and_reloads_to_identical_logits(
    variant: str, tokenized_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = {"finetune.method": variant, **METHOD_PARAMS[variant]}
    method = changes["finetune.method"]
    set_params(tokenized_project, changes)
    recorder = Recorder(monkeypatch, method)
    finetune.main()

    trainable, changed = recorder.trainable(), recorder.changed()
    head = {n for n in trainable if re.search(HEAD, n)}
    assert head and head <= changed, "the task head is trained"
    assert changed <= trainable, "a frozen parameter changed"
    if method == "full":
        words = {"bert.embeddings.word_embeddings.weight"} if changes.get("finetune.freeze_word_embeddings") else set()
        assert trainable == set(recorder.initial) - words  # everything but the word embeddings, if frozen
    elif method == "freeze":
        last_layer = {n for n in recorder.initial if "encoder.layer.1." in n}  # of the tiny model's two
        assert changed - head == (last_layer if changes.get("finetune.freeze.top_k_layers") else set())
    else:
        adapter = trainable - head
        assert adapter and all(re.search(ADAPTER_NAMES[method], n) for n in adapter), sorted(adapter)[:5]
        assert adapter & changed

    card = ModelCard.read(paths.MODEL)
    stats = card.training
    total = sum(p.numel() for p in recorder.trained.parameters())
    assert card.method == method and 0 < stats.trainable_params <= stats.total_params
    if method == "full" and not changes.get("finetune.freeze_word_embeddings"):
        assert stats.trainable_params == stats.total_params == total
    else:
        assert stats.trainable_params < stats.total_params
    assert stats.train_seconds > 0 and stats.peak_rss_mib > 100
    assert stats.artifact_bytes == folder_bytes(paths.MODEL, exclude=CARD_FILE)  # the card is written after
    adapter_folder = method in ("lora", "dora", "adalora", "prefix", "ia3") and not changes.get(
        "finetune.merge_adapter"
    )
    assert (paths.MODEL / "adapter_config.json").exists() == adapter_folder
    if adapter_folder:
        assert stats.trained_bytes < stats.artifact_bytes / 2  # the adapter is small beside the base copy

    # From the folder, in a new Predictor: the logits of the model in memory (merging rounds a little).
    expected = in_memory_logits(recorder.saved, TEXTS)
    tolerance = 1e-5 if changes.get("finetune.merge_adapter") else 1e-6
    np.testing.assert_allclose(Predictor(paths.MODEL).logits(TEXTS), expected, atol=tolerance)
    if changes.get("finetune.merge_adapter"):
        np.testing.assert_allclose(expected, in_memory_logits(recorder.trained, TEXTS), atol=1e-5)  # merged == adapter

    # From the MLflow registry, after evaluate registered it (no ONNX graphs: this test never reads them).
    without_onnx_export()
    evaluate.main()
    tracking.configure("sentiment-finetune")
    # Its weights, run by PyTorch.
    registered = load_predictor("models:/sentiment-classifier@challenger", runtime="torch")
    np.testing.assert_allclose(registered.logits(TEXTS), expected, atol=tolerance)
    run = mlflow.MlflowClient().get_run(card.provenance.mlflow_run_id)
    assert run.data.metrics["trainable_params"] == stats.trainable_params
    assert {"train_seconds", "peak_rss_mib", "artifact_bytes", "total_params"} <= set(run.data.metrics)


def test_adapter_folder_loads_without_the_pretrained_source(
    tokenized_project: Path, tiny_model: Path, tmp_path: Path
) -> None:
    set_params(tokenized_project, {"finetune.method": "lora"})
    finetune.main()
    moved = tmp_path / "elsewhere"
    shutil.copytree(paths.MODEL, moved)
    hidden = tiny_model.with_name(tiny_model.name + ".hidden")
    tiny_model.rename(hidden)  # the base weights must come from the folder itself
    try:
        logits = Predictor(moved).logits(TEXTS)
    finally:
        hidden.rename(tiny_model)
    np.testing.assert_allclose(logits, Predictor(paths.MODEL).logits(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"finetune.method": "freeze", "finetune.freeze.top_k_layers": 3},
            "finetune.freeze.top_k_layers: 3 exceeds the model's 2",
        ),
        (
            {"finetune.adalora.tinit": 0.5, "finetune.adalora.tfinal": 0.5},
            "finetune.adalora: tinit + tfinal must leave steps",
        ),
        ({"finetune.class_weights": [1.0, 2.0, 3.0]}, "finetune.class_weights: 3 weights for 2 labels"),
        (
            {"finetune.method": "prefix", "finetune.merge_adapter": True},
            "merge_adapter: only lora, dora, adalora and ia3",
        ),
        (
            {"finetune.method": "lora", "finetune.freeze_word_embeddings": True},
            "finetune: freeze_word_embeddings: for method full",
        ),
        ({"finetune.method": "lora", "finetune.lora.target_modules": ["nonexistent"]}, "finetune.lora"),
    ],
)
def test_impossible_method_settings_are_one_line_errors(
    changes: dict, message: str, tokenized_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(tokenized_project, changes)
    assert message in expect_user_error(finetune.main, capsys)
    assert not paths.MODEL.exists()
