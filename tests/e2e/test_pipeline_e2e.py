"""`dvc repro` in a temporary copy of the project, on tiny data and a tiny model: the whole DAG runs,
a second run skips everything, a param change re-runs exactly its dependents, and DVC's metrics, plots
and experiments commands work across commits."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from builders import make_project, write_sentiment_tsv
from helpers import (
    ALL_STAGES,
    changed_stages,
    commit,
    dvc_repro,
    free_port,
    running_server,
    set_params,
    sh,
    slow_steps_hook,
    venv_env,
)
from pipeline.card import ModelCard
from pipeline.evaluation.assessment import score
from pipeline.training.checkpoints import CHECKSUMS_FILE

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, list[str]]:
    """A tiny project whose whole DAG ran once and was committed ("first run"): (its folder, the stages
    that first `dvc repro` ran)."""
    base = tmp_path_factory.mktemp("e2e")
    root = make_project(base / "project", write_sentiment_tsv(base / "reviews.tsv"), tiny_model, repo=True)
    ran = dvc_repro(root)
    commit(root, "first run")
    return root, ran


@pytest.fixture
def repo(first_run: tuple[Path, list[str]]) -> Iterator[Path]:
    """The project as its first run left it; whatever a test changed, committed or ran is undone after it
    (git back to the "first run" commit, DVC's outputs back to its dvc.lock), so each test stands alone."""
    root = first_run[0]
    head = sh(root, "git", "rev-parse", "HEAD").strip()
    yield root
    sh(root, "git", "reset", "-q", "--hard", head)
    sh(root, "git", "clean", "-fdq")  # untracked files; git-ignored outputs are DVC's to restore
    sh(root, "dvc", "checkout", "--force")


def test_repro_runs_every_stage_in_order(first_run: tuple[Path, list[str]], repo: Path) -> None:
    assert first_run[1] == ALL_STAGES
    assert (repo / "reports" / "report.md").read_text().startswith("# Sentiment fine-tuning report")
    assert {p.name for p in (repo / "reports" / "figures").iterdir()} >= {
        "learning_curves.png",
        "confusion_matrix.png",
        "per_class_f1.png",
    }
    assert (repo / "mlflow.db").is_file()


def test_registered_version_carries_the_dvc_lock_hashes(repo: Path) -> None:
    """Under `dvc repro`, evaluate runs after dvc.lock has the finetune entry: the version names its md5s."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["finetune"]
    train_md5 = next(dep["md5"] for dep in lock["deps"] if dep["path"] == "data/split/train.parquet")
    script = (
        "import json, mlflow; from pipeline import registry; c = registry.client(); "
        "print(json.dumps(c.get_model_version_by_alias('sentiment-classifier', 'challenger').tags))"
    )
    tags = json.loads(sh(repo, "python", "-c", script).strip().splitlines()[-1])
    assert tags["dvc_lock.data.data/split/train.parquet"] == train_md5
    assert (tags["git_commit"], tags["git_dirty"]) == (sh(repo, "git", "rev-parse", "HEAD~1").strip(), "false")


def test_second_repro_does_nothing(repo: Path) -> None:
    assert dvc_repro(repo) == []


@pytest.mark.parametrize(
    ("code", "stale"),
    [
        ("pipeline/evaluation/statistics.py", {"evaluate"}),  # bootstrap and test statistics: no training, no export
        ("pipeline/tasks/classification/scoring.py", {"evaluate"}),  # a task's test metrics and baselines
        ("pipeline/tasks/classification/reading.py", {"ingest", "split", "evaluate"}),  # how rows are read
        ("pipeline/methods/adapters.py", {"finetune", "evaluate"}),  # the peft methods' code, not their params
        ("pipeline/training/calibration.py", {"finetune", "export", "evaluate"}),  # fitted in training
        ("stages/report.py", {"report"}),
    ],
)
def test_a_code_change_makes_stale_exactly_the_stages_that_run_that_code(repo: Path, code: str, stale: set) -> None:
    """`dvc status` lists a stage whose own dependencies changed (the stages after it re-run when its
    outputs change): a stage lists the modules it imports, and evaluate the whole package (the registered
    model carries it)."""
    file = repo / code
    original = file.read_text()
    file.write_text(original + "# an edit\n")
    try:
        assert changed_stages(repo) == stale
    finally:
        file.write_text(original)
    assert changed_stages(repo) == set()


def test_report_param_reruns_only_report(repo: Path) -> None:
    set_params(repo, {"report.title": "Another title"})
    assert dvc_repro(repo) == ["report"]


def test_learning_rate_reruns_finetune_and_what_follows(repo: Path) -> None:
    set_params(repo, {"finetune.learning_rate": 0.003})
    assert dvc_repro(repo) == ["finetune", "export", "evaluate", "report"]


def test_metrics_and_plots_diff_across_commits(repo: Path) -> None:
    set_params(repo, {"finetune.learning_rate": 0.003})
    dvc_repro(repo)  # DVC's run cache may restore the outputs of an earlier run with these params
    params_diff = json.loads(sh(repo, "dvc", "params", "diff", "HEAD", "--json"))
    change = params_diff["params.yaml"]["finetune.learning_rate"]
    assert (change["old"], change["new"]) == (0.001, 0.003)
    metrics_diff = json.loads(sh(repo, "dvc", "metrics", "diff", "HEAD", "--json"))
    assert "reports/train/metrics.json" in metrics_diff  # training curves differ with the learning rate
    plots = json.loads(sh(repo, "dvc", "plots", "diff", "HEAD", "--json", "--split"))["data"]
    for name in ("Learning curves", "reports/eval/confusion.csv", "reports/train/plots/metrics/train/loss.tsv"):
        assert [p["revisions"] for p in plots[name]] == [["workspace", "HEAD"]], name


def test_a_fresh_clone_pulls_every_output_from_an_s3_remote_and_has_nothing_to_rerun(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's shared remote on an S3-compatible server (moto's, started here): `dvc push` from the
    project, `git clone` and `dvc pull` elsewhere, and that clone is complete: nothing to re-run, the
    same metrics."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    server = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running_server(server, f"{endpoint}/moto-api/", venv_env(), tmp_path / "moto.log"):
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="team-cache")
        sh(repo, "dvc", "remote", "add", "--default", "shared", "s3://team-cache/sentiment")
        sh(repo, "dvc", "remote", "modify", "shared", "endpointurl", endpoint)
        commit(repo, "the team's remote")
        sh(repo, "dvc", "push")
        clone = tmp_path / "clone"
        sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
        sh(clone, "dvc", "pull")
    assert dvc_repro(clone) == []
    assert "up to date" in sh(clone, "dvc", "status")
    assert json.loads(sh(clone, "dvc", "metrics", "show", "--json")) == json.loads(
        sh(repo, "dvc", "metrics", "show", "--json")
    )
    assert (clone / "models" / "model" / "model.safetensors").read_bytes() == (
        repo / "models" / "model" / "model.safetensors"
    ).read_bytes()


def test_experiment_run_with_set_param_is_listed(repo: Path) -> None:
    # A param only the report reads, so the experiment runs one stage; sweeps of training params on the
    # queue are specified in test_sweeps.py.
    sh(repo, "dvc", "exp", "run", "-S", "report.title=An experiment")
    rows = list(csv.DictReader(io.StringIO(sh(repo, "dvc", "exp", "show", "--csv"))))
    assert "An experiment" in [row["report.title"] for row in rows]


def test_a_finetune_killed_under_dvc_repro_resumes_on_the_next_repro(tmp_path: Path, tiny_model: Path) -> None:
    import os
    import signal
    import time

    from builders import SCHEDULE

    root = make_project(tmp_path / "project", write_sentiment_tsv(tmp_path / "reviews.tsv"), tiny_model, repo=True)
    set_params(root, SCHEDULE)
    sh(root, "dvc", "repro", "tokenize")
    hook = slow_steps_hook(tmp_path / "hook", 0.25)
    env = venv_env(PIPELINE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(hook))
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = root / "checkpoints" / "checkpoint-8" / CHECKSUMS_FILE  # the last file a checkpoint gets
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "dvc repro ended before the checkpoint at step 8"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage under it, as a crash or the OOM killer would
    proc.wait()

    assert dvc_repro(root) == ["finetune", "export", "evaluate", "report"]
    stats = ModelCard.read(root / "models" / "model").training
    assert stats.resumed_from_step >= 8 and stats.global_step == 16
    assert "changed" not in sh(root, "dvc", "status")


def test_a_pooling_change_reaches_the_evaluated_model(repo: Path) -> None:
    """`tokenize.pooling` acts at prediction, but the model folder carries it: the stages that write and
    evaluate the model re-run, and the evaluated model pools its windows the new way."""
    from pipeline.prediction.inference import Predictor

    chunked = {"tokenize.truncation": "chunk", "tokenize.max_length": 8, "tokenize.stride": 2}
    set_params(repo, {**chunked, "tokenize.pooling": "max"})
    assert dvc_repro(repo) == ["tokenize", "finetune", "export", "evaluate", "report"]
    model = Predictor(repo / "models" / "model")
    assert (model.encoding.truncation, model.encoding.pooling) == ("chunk", "max")
    metrics = json.loads((repo / "reports" / "eval" / "metrics.json").read_text())
    expected = score(model, pd.read_parquet(repo / "data" / "split" / "test.parquet"), "test")[0]
    assert metrics["accuracy"] == expected["accuracy"]  # evaluate scored the max-pooling model
    # A pooling change alone re-runs finetune, which writes pooling into the card; the stages that read the
    # model folder follow when it changes, which a dry run cannot know. (That mean and max pooling give
    # other logits is specified in test_long_texts.py.)
    set_params(repo, {"tokenize.pooling": "mean"})
    assert dvc_repro(repo, dry=True) == ["tokenize", "finetune"]
