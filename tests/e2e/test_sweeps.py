"""Sweeps on DVC's experiment queue: queued experiments run on two workers in temporary copies of the
project, each logs its own MLflow run and registers its own version in the project's store (the embedded
SQLite one, or a tracking server on PostgreSQL), `dvc exp show` lists validation and test metrics side by
side, and `pipeline-pick-experiment` applies the best by validation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from builders import make_project, write_sentiment_tsv
from helpers import commit, dvc_repro, free_port, running_server, set_params, venv_env

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e

RATES = ("0.002", "0.004")
SHOW_EXPERIMENTS = "import dvc.api, json; print(json.dumps(dvc.api.exp_show()))"


def sh(root: Path, *cmd: str) -> str:
    """A command in the project, with this environment (MLFLOW_TRACKING_URI included) and the venv on PATH."""
    proc = subprocess.run(
        cmd, cwd=root, env=venv_env(PIPELINE_CACHE_DIR=str(root.parent / "cache")), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path) -> Path:
    """A tiny project whose whole DAG ran and was committed: the baseline of the experiments. One per test:
    a queue's workers belong to one project folder, so no worker of another test can take this one's
    experiments (with another environment), and DVC's run cache has none of them yet."""
    root = make_project(tmp_path / "project", write_sentiment_tsv(tmp_path / "reviews.tsv"), tiny_model, repo=True)
    set_params(root, {"export.serve": "torch"})  # no ONNX graphs: each experiment is training and evaluation
    dvc_repro(root)
    commit(root, "baseline")
    return root


def sweep(root: Path) -> list[dict]:
    """Queue one experiment per learning rate, run them on two workers, wait; their `dvc.api.exp_show()` rows.

    Progress is read from DVC's Python API (each experiment's State), never from its console wording."""
    sh(root, "dvc", "exp", "run", "--queue", "-S", f"finetune.learning_rate={','.join(RATES)}")
    # Two workers, so the two experiments may run at the same moment. Whether they overlap is up to when
    # DVC's second worker boots, not up to this project, so the tests assert the results, not the overlap.
    sh(root, "dvc", "queue", "start", "--jobs", "2")
    deadline = time.monotonic() + 900
    while True:
        rows = [row for row in json.loads(sh(root, "python", "-c", SHOW_EXPERIMENTS)) if row["typ"] != "baseline"]
        if len(rows) == len(RATES) and not any(row["State"] in ("Queued", "Running") for row in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(2)
    failed = [row["Experiment"] or row["rev"] for row in rows if row["State"] == "Failed"]
    assert not failed, "".join(sh(root, "dvc", "queue", "logs", name) for name in failed)
    sh(root, "dvc", "queue", "stop")  # the idle workers go now, not 10 s after the test
    return rows


def finetune_runs(client: mlflow.MlflowClient) -> list:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.stage = 'finetune'", max_results=100
    )
    return [run for run in runs if run.data.params.get("finetune.learning_rate") in RATES]


def assert_each_experiment_has_its_run_and_version(client: mlflow.MlflowClient, experiments: list[dict]) -> None:
    runs = finetune_runs(client)
    assert sorted(run.data.params["finetune.learning_rate"] for run in runs) == sorted(RATES)
    versions = client.search_model_versions("name = 'sentiment-classifier'")
    registered = {v.tags.get("mlflow_run_id") for v in versions}
    assert {run.info.run_id for run in runs} <= registered  # both registered
    for run in runs:  # each experiment's metrics are its own run's, nothing mixed
        row = next(
            r for r in experiments if str(r["finetune.learning_rate"]) == run.data.params["finetune.learning_rate"]
        )
        assert run.data.metrics["test_accuracy"] == pytest.approx(row["reports/eval/metrics.json:accuracy"])


def test_experiments_queued_to_two_workers_log_into_the_project_store_and_the_best_by_validation_is_applied(
    repo: Path,
) -> None:
    experiments = sweep(repo)
    assert len(experiments) == 2
    for row in experiments:  # validation and test side by side in `dvc exp show`
        assert 0 <= row["best_validation.accuracy"] <= 1 and 0 <= row["reports/eval/metrics.json:accuracy"] <= 1
    assert not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # the copies kept no store of their own
    store = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert_each_experiment_has_its_run_and_version(store, experiments)

    sh(repo, "pipeline-pick-experiment")
    # What was applied is an experiment with the best validation score (on 12 validation texts two may tie:
    # either is a right pick), its params and its metrics together.
    applied = str(yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["learning_rate"])
    chosen = next(row for row in experiments if str(row["finetune.learning_rate"]) == applied)
    assert chosen["best_validation.accuracy"] == max(row["best_validation.accuracy"] for row in experiments)
    train_metrics = json.loads((repo / "reports" / "train" / "metrics.json").read_text())
    assert train_metrics["best_validation"]["accuracy"] == pytest.approx(chosen["best_validation.accuracy"])


def test_a_queued_sweep_registers_every_version_on_a_tracking_server_on_postgresql(
    repo: Path,
    postgres: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
              "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path / "artifacts")]  # fmt: skip
    with running_server(server, f"{url}/health", venv_env(), tmp_path / "server.log"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the queue's workers and their stages inherit it
        experiments = sweep(repo)
        assert len(experiments) == 2
        assert_each_experiment_has_its_run_and_version(mlflow.MlflowClient(url), experiments)


def test_an_mlflow_experiment_created_by_a_run_starting_at_the_same_moment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queued experiments both find no MLflow experiment, and both create it: the second uses the
    first's instead of failing (it did, on PostgreSQL, before)."""
    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    existing = mlflow.MlflowClient(tracking.tracking_uri()).create_experiment("sentiment-finetune")
    lookup = mlflow.MlflowClient.get_experiment_by_name
    lookups: list[str] = []

    def after_the_other_created_it(self: mlflow.MlflowClient, name: str) -> object:
        lookups.append(name)
        return None if len(lookups) == 1 else lookup(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", after_the_other_created_it)
    assert tracking.configure("sentiment-finetune") == existing
    assert lookups == ["sentiment-finetune", "sentiment-finetune"]
