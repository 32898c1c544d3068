"""finetune.classifier_pooling: a text classifier's head reads the first token (cls, transformers' own) or the
mean of the last hidden states over the text's tokens (mean), in training, saving, loading and every runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import copy_of
from helpers import REPO, assert_onnx_matches_pytorch, error_for, set_params
from pipeline.errors import PipelineError
from pipeline.methods.base import load_model
from pipeline.params import load_params
from pipeline.tasks.training import HOOKS
from pipeline.training.modeling import head_pooling, load_for_training, load_tokenizer
from stages import export, finetune

LABELS = ["negative", "positive"]


def classifier(tiny_model: Path, pooling: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_for_training(
        tiny_model, HOOKS.for_task("single_label_classification"), LABELS, classifier_pooling=pooling
    )


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy()


def test_mean_pooling_classifies_the_mean_of_the_texts_tokens_whatever_the_padding(tiny_model: Path) -> None:
    model = classifier(tiny_model, "mean")
    tokenizer = load_tokenizer(tiny_model)
    texts = ["a good film", "a bad film with a dull plot and a weak end"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        hidden = model.eval().base_model(**batch).last_hidden_state
        expected = model.classifier((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(logits(model, batch), expected, atol=1e-6)
    alone = logits(model, tokenizer(texts[:1], return_tensors="pt"))  # no padding
    np.testing.assert_allclose(logits(model, batch)[:1], alone, atol=1e-5)
    first_token = classifier(tiny_model, "cls")  # the same head weights (same seed), read from the pooler
    assert not np.allclose(logits(first_token, batch), logits(model, batch), atol=1e-3)


def test_the_unused_pooler_is_frozen_and_the_rest_trains(tiny_model: Path) -> None:
    model = classifier(tiny_model, "mean")
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    batch = load_tokenizer(tiny_model)(["a good film", "bad"], padding=True, return_tensors="pt")
    model.train()(**batch, labels=torch.tensor([1, 0])).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP needs every one


def test_a_mean_pooled_model_is_saved_and_loaded_as_it_was_trained(tiny_model: Path, tmp_path: Path) -> None:
    model = classifier(tiny_model, "mean")
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, HOOKS.for_task("single_label_classification").auto_model_class())
    assert loaded.config.classifier_pooling == "mean"
    assert loaded.config.architectures == ["BertForSequenceClassification"]  # transformers' own name
    batch = load_tokenizer(tiny_model)(["a good film", "a bad film and a dull one"], padding=True, return_tensors="pt")
    np.testing.assert_allclose(logits(loaded, batch), logits(model, batch), atol=1e-6)


def test_a_head_of_another_form_is_refused_naming_the_key(tiny_model: Path) -> None:
    from transformers import DistilBertConfig

    config = DistilBertConfig(vocab_size=200, dim=32, n_layers=1, n_heads=2, hidden_dim=37, num_labels=2)
    config.classifier_pooling = "mean"
    with pytest.raises(PipelineError, match="finetune.classifier_pooling: mean needs a head"):
        HOOKS.for_task("single_label_classification").auto_model_class().from_config(config)


@pytest.mark.parametrize("task", ["token_classification", "generative_classification"])
def test_tasks_without_a_head_that_reads_a_whole_text_refuse_mean_pooling(task: str) -> None:
    overrides = {"task": task, "ingest.format": "conll" if task == "token_classification" else "tsv"}
    assert "finetune.classifier_pooling: task" in error_for(**overrides, **{"finetune.classifier_pooling": "mean"})
    load_params(REPO / "params.yaml", overrides={**overrides, "finetune.classifier_pooling": "auto"})  # accepted


def sentence_transformers_folder(folder: Path, mean: bool) -> Path:
    """What a sentence-transformers model folder says of its pooling (modules.json and the Pooling module's
    config), beside the transformers files."""
    (folder / "1_Pooling").mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    modes = {"pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    return folder


def test_auto_pools_as_the_encoder_was_pretrained_where_its_folder_says(tmp_path: Path, tiny_model: Path) -> None:
    assert head_pooling("auto", tiny_model) == "cls"  # a plain transformers folder: transformers' default
    assert head_pooling("auto", sentence_transformers_folder(tmp_path / "mean", mean=True)) == "mean"
    assert head_pooling("auto", sentence_transformers_folder(tmp_path / "cls", mean=False)) == "cls"
    assert head_pooling("cls", tmp_path / "mean") == "cls"  # a stated choice wins
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_model, encoder)
    sentence_transformers_folder(encoder, mean=True)
    model = load_for_training(encoder, HOOKS.for_task("single_label_classification"), LABELS, classifier_pooling="auto")
    assert model.config.classifier_pooling == "mean" and not model.bert.pooler.dense.weight.requires_grad
    tagger = load_for_training(encoder, HOOKS.for_task("token_classification"), LABELS, classifier_pooling="auto")
    assert not hasattr(tagger.config, "classifier_pooling")  # a tagger reads every token: nothing to pool


def test_a_mean_pooled_lora_model_is_exported_and_decides_as_pytorch_in_every_runtime(
    tokenized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """LoRA: the base is loaded apart from its adapter (and must pool as trained), then merged and exported;
    a plain model's loading is the save-and-load test's."""
    root = copy_of(tokenized, tmp_path, monkeypatch)
    set_params(root, {"finetune.classifier_pooling": "mean", "finetune.method": "lora"})
    finetune.main()
    assert "mean-pooled head" in capsys.readouterr().err  # what the stage resolved, also an MLflow tag
    export.main()
    assert_onnx_matches_pytorch()  # the fp32 graph to 1e-4 in logits, the int8 graph in decisions
