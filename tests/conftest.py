"""Fixtures: a tiny randomly initialised BERT built from a config, small data files written here, and a
temporary copy of the project wired to them. Nothing is downloaded."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

POSITIVE = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb", "delightful"]
NEGATIVE = ["dull", "awful", "boring", "tedious", "clumsy", "bland", "painful", "messy"]
FILLER = ["the", "film", "movie", "story", "is", "was", "a", "and", "cast", "plot", "very", "quite", "really", "but", "this"]


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[float, str]]:
    """(rating, text) pairs whose sign follows the sentiment words in the text, all texts distinct."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        positive = len(rows) % 2 == 0
        words = rng.sample(FILLER, rng.randint(3, 9)) + rng.sample(POSITIVE if positive else NEGATIVE, rng.randint(1, 2))
        rng.shuffle(words)
        text = " ".join(words)
        if text in seen:
            continue
        seen.add(text)
        rating = round(rng.uniform(0.5, 3.5), 3) * (1 if positive else -1)
        rows.append((rating, text))
    return rows


def write_sentiment_tsv(path: Path, n: int = 120, seed: int = 0, extra: list[tuple] | None = None) -> Path:
    """A file in the raw format of the default source: id TAB mean rating TAB text, no header."""
    rows = [(i + 1, rating, text) for i, (rating, text) in enumerate(sentiment_rows(n, seed))]
    rows += extra or []
    path.write_text("".join(f"{i}\t{r}\t{t}\r\n" for i, r, t in rows), encoding="utf-8")
    return path


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece fast tokenizer over the fixture words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list("abcdefghijklmnopqrstuvwxyz")
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI for subprocesses; keep that inside one test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def tiny_params(data_file: Path, model_dir: Path) -> dict:
    """The repository's params.yaml with the data, model and budget swapped for tiny ones."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(source=str(data_file), sha256=None)
    params["model"].update(source=str(model_dir), sha256=None)
    params["tokenize"]["max_length"] = 32
    params["finetune"].update(num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                              logging_steps=2, learning_rate=1e-3)
    params["report"]["baseline"]["max_features"] = 500
    return params


def make_project(root: Path, data_file: Path, model_dir: Path, *, repo: bool = False) -> Path:
    """A copy of the project (code, dvc.yaml, params) with tiny params; with `repo`, also a git + DVC repo."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(data_file, model_dir), sort_keys=False))
    if not repo:
        return root
    env_bin = str(Path(sys.executable).parent)
    run = lambda *cmd: subprocess.run(cmd, cwd=root, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q", "-b", "main")
    run(f"{env_bin}/dvc", "init", "-q")
    run(f"{env_bin}/dvc", "config", "core.analytics", "false")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tiny project")
    return root


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny project; the test runs with it as the working directory."""
    (tmp_path / "raw").mkdir()
    data_file = write_sentiment_tsv(tmp_path / "raw" / "reviews.tsv")
    root = make_project(tmp_path / "project", data_file, tiny_model)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root
