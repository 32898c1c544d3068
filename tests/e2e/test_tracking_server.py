"""The pipeline's tracking, registration and promotion against a real `mlflow server` on a PostgreSQL
backend store (started by the `postgres` fixture from the installed binaries; the test fails where none
can be started) with a proxied artifact root, over HTTP: only MLFLOW_TRACKING_URI changes."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from helpers import free_port, running_server, set_params, venv_env
from pipeline import paths, registry
from pipeline.card import ModelCard
from pipeline.registry import promote
from stages import evaluate, export, finetune, ingest, split, tokenize

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e


def test_pipeline_tracks_registers_and_promotes_on_a_tracking_server_on_postgresql(
    project: Path, tmp_path: Path, postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        postgres,
        "--artifacts-destination",
        str(server_dir / "artifacts"),
    ]
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{url}/health", venv_env(), server_dir / "server.log"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        set_params(project, {"promote.floor": 0.0})
        for stage in (ingest, split, tokenize, finetune, export, evaluate):
            stage.main()
        assert promote.run([]) == 0

        client = mlflow.MlflowClient(url)
        run = client.get_run(ModelCard.read(paths.MODEL).provenance.mlflow_run_id)
        assert run.data.params["finetune.learning_rate"] == "0.001" and "test_accuracy" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "loss")) > 0
        champion = client.get_model_version_by_alias("sentiment-classifier", registry.CHAMPION)
        assert champion.tags["mlflow_run_id"] == run.info.run_id
        assert [d["result"] for d in registry.decisions(client, "sentiment-classifier")] == ["promoted"]
        served = mlflow.pyfunc.load_model("models:/sentiment-classifier@champion").predict(["a great film"])
        assert served["label"][0] in ("negative", "positive")

    assert not Path("mlflow.db").exists() and not Path("mlartifacts").exists()  # nothing went to the local store
    assert any((server_dir / "artifacts").rglob("model.safetensors"))  # the server stored the artifacts
