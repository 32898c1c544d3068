"""The fixtures: a tiny randomly initialised BERT and Llama, tiny projects, models trained once per run, a
PostgreSQL server; what they are made of is in builders.py. Also the run's order of files and its threads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builders import (
    build_tiny_llama,
    build_tiny_model,
    build_trained,
    built_once,
    copy_of,
    make_project,
    postgres_missing,
    project_run_through,
    write_sentiment_tsv,
)

# One OpenMP thread per process. Two workers, each running torch and the stages it starts with a thread per
# core, oversubscribe the 2 cores, and OpenMP threads spin while they wait; the tests' tiny models gain
# nothing from a second thread (pytest: 645 s against 884 s with the default, 2 cores, 2026-12-04). Set here,
# before anything imports torch; the stages and servers the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# Files that take minutes go first. The two workers take whole files (--dist loadfile) in collection order,
# two each to start with, then the next file whenever one is done; a long file collected last would run on
# one worker at the end while the other has nothing left (pyproject.toml turns off xdist's own order, which
# sorts files by how many tests they have).
LONG_FILES = ("test_sweeps.py", "test_pipeline_e2e.py", "test_generation.py", "test_methods.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: each file keeps its own order


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fine-tuned tiny models — `good` (trained to fit the fixture data) and `bad` (one step at a tiny
    learning rate), each with its ONNX export (`good_onnx`, `bad_onnx`) — and two splits of the same data
    (`split_a`, `split_b`: other seed, other test set). Built once per run (built_once), from a tiny model
    of its own: the workers' `tiny_model` folders are theirs (a test hides one for a moment)."""
    return built_once(tmp_path_factory, "trained", build_trained)


@pytest.fixture
def register(project: Path, trained: dict[str, Path]) -> Callable[..., str]:
    """register("good"|"bad", split="split_a"|"split_b") evaluates that model on that split's test set and
    registers it (new version, @challenger) in the project's mlflow.db; returns the version. The project's
    promotion gate is set to floor 0.8, minimum improvement 0.05."""
    from helpers import set_params
    from pipeline import paths
    from stages import evaluate

    def run(model: str, split: str = "split_a") -> str:
        for source, target in (
            (trained[model], paths.MODEL),
            (trained[f"{model}_onnx"], paths.ONNX),
            (trained[split], paths.SPLIT),
        ):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        evaluate.main()
        return json.loads((paths.EVAL / "registry.json").read_text())["version"]

    set_params(project, {"promote.floor": 0.8, "promote.min_improvement": 0.05})
    return run


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A tiny project run through tokenize once; `tokenized_project` gives each test its own copy."""
    from stages import ingest, split, tokenize

    return project_run_through(tmp_path_factory.mktemp("tokenized"), tiny_model, (ingest, split, tokenize), rows=160)


@pytest.fixture
def tokenized_project(tokenized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = copy_of(tokenized, tmp_path, monkeypatch)
    from helpers import set_params

    set_params(
        root, {"finetune.num_train_epochs": 3, "finetune.learning_rate": 5e-3, "finetune.early_stopping_patience": None}
    )
    return root


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1; its SQLAlchemy URI. A test that asks for it fails where
    none can be started: it is never skipped, nor replaced by SQLite."""
    if missing := postgres_missing():
        pytest.fail(f"a PostgreSQL server is needed and cannot be started: {missing}")
    # PostgreSQL refuses to run as root; as root, run it as the `postgres` user in a folder it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if as_user:
        folder.chmod(0o755)
        shutil.chown(folder, "postgres")
    from helpers import free_port

    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    try:
        run("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "mlflow")
        run(
            "pg_ctl",
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {folder}",
            "start",
        )
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
