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

from conftest import make_project, write_sentiment_tsv
from helpers import commit, dvc_repro, free_port, running_server, set_params, venv_env

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e

# Each test sweeps other values: DVC's run cache would restore a repeated experiment without running it.
RATES = {"sqlite": ("0.002", "0.004"), "postgresql": ("0.003", "0.005")}


def sh(root: Path, *cmd: str) -> str:
    """A command in the project, with this environment (MLFLOW_TRACKING_URI included) and the venv on PATH."""
    proc = subprocess.run(
        cmd, cwd=root, env=venv_env(PIPELINE_CACHE_DIR=str(root.parent / "cache")), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A tiny project whose whole DAG ran and was committed: the baseline of the experiments."""
    base = tmp_path_factory.mktemp("sweeps")
    root = make_project(base / "project", write_sentiment_tsv(base / "reviews.tsv"), tiny_model, repo=True)
    set_params(root, {"export.serve": "torch"})  # no ONNX graphs: each experiment is training and evaluation
    dvc_repro(root)
    commit(root, "baseline")
    return root


def sweep(root: Path, rates: tuple[str, str]) -> list[dict]:
    """Queue one experiment per learning rate, run them two at a time, wait; their `dvc exp show` rows."""
    sh(root, "dvc", "exp", "run", "--queue", "-S", f"finetune.learning_rate={','.join(rates)}")
    # Two workers, so the two experiments may run at the same moment. Whether they overlap is up to when
    # DVC's second worker boots, not up to this project, so the tests assert the workers, not the overlap.
    assert "Started '2' new experiments task queue workers." in sh(root, "dvc", "queue", "start", "--jobs", "2")
    deadline = time.monotonic() + 900
    while True:
        status = sh(root, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    failed = [line.split()[1] for line in status.splitlines() if line.endswith("Failed")]
    assert not failed, status + "".join(sh(root, "dvc", "queue", "logs", name) for name in failed)
    # Idle workers linger for 10 s: gone before the next sweep, which may run in another environment.
    while "Worker status: 0 active, 0 idle" not in status:
        assert time.monotonic() < deadline, status
        time.sleep(1)
        status = sh(root, "dvc", "queue", "status")
    rows = json.loads(sh(root, "python", "-c", "import dvc.api, json; print(json.dumps(dvc.api.exp_show()))"))
    return [row for row in rows if row["typ"] != "baseline" and str(row["finetune.learning_rate"]) in rates]


def finetune_runs(client: mlflow.MlflowClient, rates: tuple[str, str]) -> list:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.stage = 'finetune'", max_results=100
    )
    return [run for run in runs if run.data.params.get("finetune.learning_rate") in rates]


def assert_each_experiment_has_its_run_and_version(
    client: mlflow.MlflowClient, experiments: list[dict], rates: tuple[str, str]
) -> None:
    runs = finetune_runs(client, rates)
    assert sorted(run.data.params["finetune.learning_rate"] for run in runs) == sorted(rates)
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
    experiments = sweep(repo, RATES["sqlite"])
    assert len(experiments) == 2
    for row in experiments:  # validation and test side by side in `dvc exp show`
        assert 0 <= row["best_validation.accuracy"] <= 1 and 0 <= row["reports/eval/metrics.json:accuracy"] <= 1
    assert not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # the copies kept no store of their own
    store = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert_each_experiment_has_its_run_and_version(store, experiments, RATES["sqlite"])

    picked = sh(repo, "python", "-m", "pipeline.experiments")
    best = max(experiments, key=lambda row: row["best_validation.accuracy"])
    assert picked.splitlines()[2].startswith(f"| 1 | {best['Experiment']} | {best['finetune.learning_rate']} |")
    applied = yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["learning_rate"]
    assert str(applied) == str(best["finetune.learning_rate"])
    assert json.loads((repo / "reports" / "train" / "metrics.json").read_text())["best_validation"]["accuracy"] == (
        pytest.approx(best["best_validation.accuracy"])
    )
    sh(repo, "git", "checkout", "--", ".")  # back to the baseline for the next test
    sh(repo, "dvc", "checkout", "--force")


def test_a_queued_sweep_registers_every_version_on_a_tracking_server_on_postgresql(
    repo: Path,
    postgres: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sh(repo, "dvc", "exp", "remove", "--all-commits")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
              "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path / "artifacts")]  # fmt: skip
    with running_server(server, f"{url}/health", venv_env(), tmp_path / "server.log"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the queue's workers and their stages inherit it
        experiments = sweep(repo, RATES["postgresql"])
        assert len(experiments) == 2
        assert_each_experiment_has_its_run_and_version(mlflow.MlflowClient(url), experiments, RATES["postgresql"])


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
