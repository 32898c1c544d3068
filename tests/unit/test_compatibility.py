"""What was saved before the model card and the `pipeline` package existed keeps working: model folders
with the old flat training.json load and predict, and versions registered by the old `stages` code load,
batch-predict and serve under the new code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from builders import REPO, write_sentiment_tsv
from helpers import free_port, running_server, serve_command, venv_env
from pipeline.card import CARD_FILE, SCHEMA_VERSION, EncodingSpec, ModelCard
from pipeline.errors import PipelineError
from pipeline.prediction.inference import Predictor

# The last commit before the move to `pipeline/` and the typed card: its code registered the old versions.
LEGACY_COMMIT = "bc0511b"
TEXTS = ["a great and wonderful film", "dull boring plot", "the cast was charming but the story tedious"]


def uncalibrated(folder: Path) -> Predictor:
    """A Predictor of `folder` with the temperature of models saved before temperature scaling (1)."""
    predictor = Predictor(folder)
    predictor.card = predictor.card.model_copy(update={"temperature": 1.0})
    return predictor


def legacy_flat_card(card: ModelCard) -> dict:
    """training.json as the finetune stage wrote it before the card (one flat dict), from a new card."""
    stats = card.training
    flat = {
        **card.provenance.model_dump(),
        "labels": card.labels,
        "task": card.task,
        "method": card.method,
        "merged_adapter": card.merged_adapter,
        "base_model": card.base_model,
        "train_examples": card.train_examples,
        **card.encoding.model_dump(),
        "thresholds": card.thresholds,
        f"best_validation_{stats.best_metric_name}": stats.best_metric,
        **stats.model_dump(exclude={"best_metric_name", "best_metric"}),
    }
    return flat


@pytest.fixture(scope="module")
def legacy_folder(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("legacy") / "model"
    shutil.copytree(trained["good"], folder)
    (folder / CARD_FILE).write_text(json.dumps(legacy_flat_card(ModelCard.read(folder)), indent=2))
    return folder


def test_an_old_layout_folder_loads_and_predicts_like_the_new_one(
    legacy_folder: Path, trained: dict[str, Path]
) -> None:
    old, new = ModelCard.read(legacy_folder), ModelCard.read(trained["good"])
    assert "schema_version" not in json.loads((legacy_folder / CARD_FILE).read_text())
    # Every field the flat dict held lands where the card keeps it; the temperature came later (1: none).
    assert old == new.model_copy(update={"temperature": 1.0})
    pd.testing.assert_frame_equal(Predictor(legacy_folder).predict(TEXTS), uncalibrated(trained["good"]).predict(TEXTS))


def test_the_oldest_folders_with_only_task_labels_and_length_still_load(
    tmp_path: Path, trained: dict[str, Path]
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained["good"], folder)
    (folder / CARD_FILE).write_text(
        json.dumps({"task": "single_label_classification", "labels": ["negative", "positive"], "max_length": 32})
    )
    card = ModelCard.read(folder)
    assert card.encoding == EncodingSpec(max_length=32) and card.training is None and card.provenance is None
    assert len(Predictor(folder).predict(TEXTS)) == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not a fine-tuned model folder (no training.json)"),
        ("{oops", "unreadable model card"),
        (json.dumps({"schema_version": SCHEMA_VERSION + 1, "task": "x"}), "is newer than this code reads"),
        (
            json.dumps({"schema_version": SCHEMA_VERSION, "labels": ["a"], "encoding": {"max_length": 8}}),
            "task: required field is missing",
        ),
        (
            json.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "task": "x",
                    "labels": ["a"],
                    "encoding": {"max_length": 8},
                    "colour": "red",
                }
            ),
            "colour: Extra inputs are not permitted",
        ),
    ],
)
def test_a_folder_that_is_not_a_readable_model_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / CARD_FILE).write_text(content)
    with pytest.raises(PipelineError) as error:
        ModelCard.read(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_card_round_trips(trained: dict[str, Path], tmp_path: Path) -> None:
    card = ModelCard.read(trained["good"])
    assert ModelCard.read(card.write(tmp_path).parent) == card
    assert json.loads((tmp_path / CARD_FILE).read_text())["schema_version"] == SCHEMA_VERSION


def legacy_code(target: Path) -> Path:
    """The `stages` package and params.yaml of LEGACY_COMMIT, from this repository's history."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{LEGACY_COMMIT}^{{commit}}"], capture_output=True
    )
    if listing.returncode != 0:
        pytest.skip(f"commit {LEGACY_COMMIT} is not in this clone's history (a shallow clone)")
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", LEGACY_COMMIT, "stages", "params.yaml"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@pytest.fixture(scope="module")
def legacy_registered(
    legacy_folder: Path, trained: dict[str, Path], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """A version registered by the old code's evaluate stage (its own `stages` package as the model's code)."""
    root = legacy_code(tmp_path_factory.mktemp("legacy-project") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"].update(source=str(write_sentiment_tsv(root / "unused.tsv")), sha256=None)
    params["model"].update(source=str(tiny_model), sha256=None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(legacy_folder, root / "models" / "model")
    shutil.copytree(trained["split_a"], root / "data" / "split")
    env = venv_env(PYTHONPATH=str(root))
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=root, env=env, check=True, capture_output=True)
    registry = json.loads((root / "reports" / "eval" / "registry.json").read_text())
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "model": registry["model_uri"], "root": str(root)}


def test_a_version_registered_before_the_move_batch_predicts_with_the_new_code(
    legacy_registered: dict[str, str], trained: dict[str, Path], tmp_path: Path
) -> None:
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "texts.csv", index=False)
    env = venv_env(MLFLOW_TRACKING_URI=legacy_registered["uri"], PYTHONPATH=str(REPO))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.serving.predict",
            "--model",
            legacy_registered["model"],
            "--input",
            str(tmp_path / "texts.csv"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    predicted = pd.read_json(tmp_path / "out.jsonl", lines=True)
    expected = uncalibrated(trained["good"]).predict(TEXTS)
    assert predicted["predicted_label"].tolist() == expected["label"].tolist()
    assert predicted["predicted_score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)
    model_code = Path(legacy_registered["root"]) / "mlartifacts"
    assert any(model_code.rglob("stages/inference.py")), "the version carries the old code it was registered with"


def test_a_version_registered_before_the_move_is_served(legacy_registered: dict[str, str], tmp_path: Path) -> None:
    import urllib.request

    port = free_port()
    cmd = serve_command(legacy_registered["model"], port)
    with running_server(
        cmd,
        f"http://127.0.0.1:{port}/ping",
        venv_env(MLFLOW_TRACKING_URI=legacy_registered["uri"]),
        tmp_path / "serve.log",
    ):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": TEXTS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    assert [p["label"] for p in predictions] == Predictor(Path(legacy_registered["root"]) / "models" / "model").predict(
        TEXTS
    )["label"].tolist()
