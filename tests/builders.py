"""Builders for the tests: small data files written here (sentiment reviews, CoNLL), tiny models built from
a config (BERT, Llama with a chat template), tiny params, temporary copies of the project, and models
trained once per run. Nothing is downloaded. The fixtures in conftest.py hand them to the tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from helpers import REPO

POSITIVE = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb", "delightful"]
NEGATIVE = ["dull", "awful", "boring", "tedious", "clumsy", "bland", "painful", "messy"]
FILLER = [
    "the",
    "film",
    "movie",
    "story",
    "is",
    "was",
    "a",
    "and",
    "cast",
    "plot",
    "very",
    "quite",
    "really",
    "but",
    "this",
]


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[float, str]]:
    """(rating, text) pairs whose sign follows the sentiment words in the text, all texts distinct."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        positive = len(rows) % 2 == 0
        words = rng.sample(FILLER, rng.randint(3, 9)) + rng.sample(
            POSITIVE if positive else NEGATIVE, rng.randint(1, 2)
        )
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
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + sorted(set(POSITIVE + NEGATIVE + FILLER))
        + list("abcdefghijklmnopqrstuvwxyz")
    )
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file` argument is silently ignored).
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llama_config(vocab_size: int, **changes: Any) -> Any:
    """The tests' Llama: 2 layers, 32 wide, 2 attention heads sharing 1 key/value head."""
    from transformers import LlamaConfig

    shape = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, max_position_embeddings=512, **(shape | changes)
    )


def build_tiny_llama(folder: Path, end_first: bool = False) -> Path:
    """A 2-layer, 32-wide Llama with random weights and a word-level fast tokenizer with a ChatML chat
    template (<|im_end|> ends a turn, as in SmolLM2). `end_first`: the end-of-turn token gets id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = (
        ["<|im_end|>", "<pad>", "<unk>", "<|im_start|>"]
        if end_first
        else ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    )
    words = sorted(set(POSITIVE + NEGATIVE + FILLER)) + [
        "user",
        "assistant",
        "system",
        "review",
        "sentiment",
        "positive",
        "negative",
        "good",
        "bad",
        ":",
        "?",
        ".",
    ]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(folder)
    config = tiny_llama_config(
        len(vocab),
        tie_word_embeddings=True,
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=None,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_params(data_source: str, model_dir: Path) -> dict:
    """The repository's params.yaml with the data, model and budget swapped for tiny ones."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(source=data_source, sha256=None)
    params["model"].update(source=str(model_dir), sha256=None)
    params["tokenize"]["max_length"] = 32
    params["finetune"].update(
        num_train_epochs=2,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        per_device_eval_batch_size=16,
        logging_steps=2,
        learning_rate=1e-3,
        # The fixtures' few-step trainings were set up on batches padded to their longest text. Padding to 8
        # changes nothing but the dropout draws (without dropout the losses agree to every digit), and
        # with them where these short runs leave the random start: the `good` model of `trained` stayed at
        # chance for its 120 steps.
        pad_to_multiple_of=None,
        # One suite on every CPU: `auto` trains in bf16 where the CPU computes in bf16 (AVX-512 BF16, AMX) and
        # in fp32 elsewhere, and the fixtures' floors and exact checks would then be tuned on one of the two.
        # bf16 has tests of its own (test_training_controls.py), the detection one against the real CPU flags.
        precision="fp32",
    )
    params["evaluate"]["baseline"]["max_features"] = 500
    params["evaluate"]["bootstrap_rounds"] = params["promote"]["bootstrap_rounds"] = 200
    return params


def make_project(root: Path, data_file: Path, model_dir: Path, *, repo: bool = False) -> Path:
    """A copy of the project (code, dvc.yaml, params) with tiny params, its data copied into data/raw/; with
    `repo`, also a git + DVC repo."""
    from helpers import raw_data

    root.mkdir(parents=True, exist_ok=True)
    for package in ("stages", "pipeline"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "data/raw/README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "reports" / "benchmarks", root / "reports" / "benchmarks")  # a report dependency
    params = tiny_params(raw_data(root, data_file), model_dir)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if repo:
        init_repo(root)
    return root


def init_repo(root: Path) -> None:
    """Make a project folder a git + DVC repository with everything in it committed, as a user's clone is:
    the code, params and the data in data/raw/ in git."""
    env_bin = str(Path(sys.executable).parent)
    run = lambda *cmd: subprocess.run(cmd, cwd=root, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q", "-b", "main")
    run(f"{env_bin}/dvc", "init", "-q")
    run(f"{env_bin}/dvc", "config", "core.analytics", "false")
    run("git", "add", "-A")
    # The user's data in data/raw/ is committed, as the README says for small data (`git add -f`: the
    # project's .gitignore keeps data out by default), so DVC's experiment workspaces and clones have it.
    run("git", "add", "-f", "data/raw")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tiny project")


@contextlib.contextmanager
def inside(root: Path, **env: str) -> Iterator[None]:
    """Run a block with `root` as the working directory and `env` set, as a stage would run there."""
    saved_cwd, saved_env = Path.cwd(), dict(os.environ)
    os.chdir(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict[str, Path]]):
    """What `build(folder)` makes, built once per test run rather than once per xdist worker (a session
    fixture is per worker): the first worker to get here builds it under a lock in the folder the run's
    workers share, the others wait and read what it wrote (xdist's documented recipe). Only for outputs
    no test changes, and that point at nothing of one worker's own."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing to share
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, parent of each worker's basetemp
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder = shared / name
            folder.mkdir()
            built = build(folder)
            done.write_text(json.dumps({key: str(path) for key, path in built.items()}))
    return {key: Path(path) for key, path in json.loads(done.read_text()).items()}


def build_trained(base: Path) -> dict[str, Path]:
    from helpers import set_params
    from pipeline import paths
    from stages import export, finetune, ingest, split, tokenize

    tiny_model = build_tiny_model(base / "tiny-bert")
    data_file = write_sentiment_tsv(base / "reviews.tsv", n=300)
    root = make_project(base / "project", data_file, tiny_model)
    out = {name: base / name for name in ("good", "good_onnx", "bad", "bad_onnx", "split_a", "split_b")}
    with inside(root, PIPELINE_CACHE_DIR=str(base / "cache")):
        for stage in (ingest, split, tokenize):
            stage.main()
        shutil.copytree(paths.SPLIT, out["split_a"])
        set_params(
            root,
            {"finetune.num_train_epochs": 4, "finetune.learning_rate": 5e-3, "finetune.early_stopping_patience": 4},
        )
        for name, changes in (
            ("good", {}),
            ("bad", {"finetune.max_steps": 1, "finetune.learning_rate": 1e-7}),
        ):
            set_params(root, changes)
            finetune.main()
            export.main()
            shutil.copytree(paths.MODEL, out[name])
            shutil.copytree(paths.ONNX, out[f"{name}_onnx"])
        set_params(root, {"seed": 7})
        split.main()
        shutil.copytree(paths.SPLIT, out["split_b"])
    return out


def project_run_through(base: Path, tiny_model: Path, stages: tuple, rows: int = 120) -> Path:
    """A tiny project under `base` with `stages` run once: built by a module- or session-scoped fixture,
    then copied for each test by `copy_of`."""
    root = make_project(base / "project", write_sentiment_tsv(base / "reviews.tsv", n=rows), tiny_model)
    with inside(root, PIPELINE_CACHE_DIR=str(base / "cache")):
        for stage in stages:
            stage.main()
    return root


def copy_of(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a built project, as the working directory of one test, with a store of its own: its
    mlflow.db and mlartifacts/ copied, and the absolute paths the store records moved to the copy."""
    root = tmp_path / "project"
    shutil.copytree(project, root)
    relocate_mlflow_store(root, project)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def relocate_mlflow_store(root: Path, original: Path) -> None:
    """Rewrite the absolute paths a copied mlflow.db records (artifact locations, run and model URIs) from
    the original folder to the copy's. MLflow has no way to move a store, and the pipeline refuses a
    store whose artifacts lie in another project (pipeline/tracking.py); only tests copy stores."""
    import sqlite3

    db = root / "mlflow.db"
    if not db.is_file():
        return
    old, new = str(original.resolve()), str(root.resolve())
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                name, kind = column[1], str(column[2]).upper()
                if "CHAR" in kind or "TEXT" in kind:
                    connection.execute(
                        f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) WHERE instr("{name}", ?) > 0',
                        (old, new, old),
                    )


PEOPLE = ["anna", "boris", "carla", "dmitri"]
PLACES = [["paris"], ["oslo"], ["new", "york"], ["rome"]]


def conll_sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Sentences of (word, IOB2 tag): a person (PER), a place of one or two words (LOC), filler words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, rng.randint(1, 4))]
        person = [(rng.choice(PEOPLE).title(), "B-PER")]
        place = rng.choice(PLACES)
        location = [(w.title(), ("B-" if i == 0 else "I-") + "LOC") for i, w in enumerate(place)]
        parts = [person, words[:2], location, words[2:]]
        rng.shuffle(parts)
        sentences.append([pair for part in parts for pair in part])
    return sentences


def write_conll(
    folder: Path, sizes: dict[str, int] | None = None, seed: int = 0, document_size: int | None = None
) -> Path:
    """train.txt / valid.txt / test.txt in CoNLL-2003's layout: word POS chunk NER, -DOCSTART-, blank lines
    (a new document every `document_size` sentences; one document per file by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (name, n) in enumerate((sizes or {"train": 80, "valid": 20, "test": 20}).items()):
        lines = []
        for index, sentence in enumerate(conll_sentences(n, seed + offset)):
            if index == 0 or (document_size and index % document_size == 0):
                lines += ["-DOCSTART- -X- -X- O", ""]
            lines += [f"{word} NN I-NP {tag}" for word, tag in sentence] + [""]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


NER_PARAMS = {
    "task": "token_classification",
    "ingest.format": "conll",
    "ingest.splits": {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"},
    "ingest.header": False,
    "ingest.column_names": None,
    "ingest.score_to_label": None,
    "split.overlap": "warn",
    "finetune.metric_for_best_model": "f1",
    "evaluate.registered_model_name": "ner-tagger",
}


def postgres_missing() -> str | None:
    """Why no PostgreSQL server can be started here, or None when one can."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is needed for a PostgreSQL backend store"
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        return "PostgreSQL (initdb, pg_ctl) is not installed"
    return None


def write_responses(path: Path, n: int = 120) -> Path:
    """JSON Lines of (review, summary): the summary says "good film" or "bad film" as the review's words do."""
    lines = [
        json.dumps({"review": text, "summary": "good film" if rating > 0 else "bad film"})
        for rating, text in sentiment_rows(n)
    ]
    lines += [json.dumps({"review": "", "summary": "good film"}), json.dumps({"review": "a film", "summary": None})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PROMPT = {"template": "review : {text} sentiment ?", "label_words": {"negative": "bad", "positive": "good"}}


def label_set_rows(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Texts with praise words, complaint words, both or neither, labelled accordingly."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        kind = len(rows) % 4  # 0 none, 1 praise, 2 complaint, 3 both
        words = rng.sample(FILLER, rng.randint(3, 7))
        labels = []
        if kind in (1, 3):
            words.append(rng.choice(POSITIVE))
            labels.append("praise")
        if kind in (2, 3):
            words.append(rng.choice(NEGATIVE))
            labels.append("complaint")
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, sorted(labels)))
    return rows


def pair_rows(n: int) -> pd.DataFrame:
    """A premise (random sentiment) and a reply; the label is the reply's sentiment, so only a model that
    reads the second text can learn it."""
    rng = random.Random(3)
    replies = sentiment_rows(n, seed=11)
    premises = [text for _, text in sentiment_rows(n, seed=12)]
    rng.shuffle(premises)
    return pd.DataFrame(
        {
            "premise": premises,
            "reply": [t for _, t in replies],
            "label": ["agree" if r > 0 else "disagree" for r, _ in replies],
        }
    )


PAIR_PARAMS = {
    "ingest.format": "csv",
    "ingest.header": True,
    "ingest.column_names": None,
    "ingest.score_to_label": None,
    "ingest.text_column": ["premise", "reply"],
    "ingest.label_column": "label",
}


SCHEDULE = {
    "finetune.max_steps": 16,
    "finetune.eval_steps": 4,
    "finetune.logging_steps": 1,
    "finetune.per_device_train_batch_size": 8,
    "finetune.early_stopping_patience": None,
}
