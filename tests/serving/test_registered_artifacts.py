"""What a registered version carries is checked wherever it is loaded: a file changed or gone after
registration is refused by name (serving, batch prediction from `models:/`, promotion, rollback), and an
explicit runtime reads only what that runtime needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import yaml

from helpers import expect_user_error, promote_command
from pipeline import registry
from pipeline.errors import PipelineError
from pipeline.prediction.inference import Predictor, load_predictor
from pipeline.prediction.runtimes import ONNX_FILES
from pipeline.registry import promote

NAME = "sentiment-classifier"
TEXTS = ["a great and wonderful film", "dull boring plot"]


def stored(version: str, artifact: str) -> Path:
    """Where an artifact of the version (`model_dir`, `onnx_dir`) lies in the project's artifact store (not a
    downloaded copy), as the version's MLmodel file names it."""
    root = Path(urlparse(registry.client().get_model_version_download_uri(NAME, version)).path)
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    return root / mlmodel["flavors"]["python_function"]["artifacts"][artifact]["path"]


def registered_runtime(version: str) -> str:
    return registry.client().get_model_version(NAME, version).tags["runtime"]


def overwrite_inside(file: Path) -> None:
    """Change bytes in the middle of a file, keeping its size and its header: still a valid-looking file."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    file.write_bytes(bytes(data))


def test_a_registered_weights_file_changed_inside_is_refused_by_name_where_the_version_loads(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    version = register("good")
    assert load_predictor(f"models:/{NAME}/{version}").predict(TEXTS)["label"].tolist()  # loads before
    overwrite_inside(stored(version, "model_dir") / "model.safetensors")
    with pytest.raises(
        PipelineError, match=r"registered file model_dir/model.safetensors .* does not match the sha256"
    ):
        load_predictor(f"models:/{NAME}/{version}", runtime="torch")
    with pytest.raises(PipelineError, match="model_dir/model.safetensors"):
        mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")  # what `mlflow models serve` runs at start
    capsys.readouterr()  # what registering printed
    err = expect_user_error(promote_command([]), capsys)
    assert f"v{version} of '{NAME}' cannot be loaded, so it is not promoted" in err and "model.safetensors" in err
    assert registry.version_by_alias(registry.client(), NAME, registry.CHAMPION) is None


def test_promoting_a_version_whose_files_are_gone_is_refused_and_the_champion_stays(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    champion = register("good")
    assert promote.run([]) == 0
    challenger = register("good", split="split_b")
    for file in (stored(challenger, "model_dir")).iterdir():
        file.unlink()
    capsys.readouterr()  # what registering printed
    err = expect_user_error(promote_command(["--force", "testing a gone model"]), capsys)
    assert f"v{challenger} of '{NAME}' cannot be loaded" in err and "is missing" in err
    assert str(registry.version_by_alias(registry.client(), NAME, registry.CHAMPION).version) == champion


def test_an_explicit_torch_runtime_loads_though_the_registered_onnx_graph_is_gone(
    register: Callable[..., str], trained: dict[str, Path]
) -> None:
    version = register("good")
    runtime = registered_runtime(version)
    assert runtime in ONNX_FILES  # evaluate registers an ONNX runtime for the fixture model
    (stored(version, "onnx_dir") / ONNX_FILES[runtime]).unlink()
    with pytest.raises(PipelineError, match=f"registered file onnx_dir/{ONNX_FILES[runtime]} is missing"):
        load_predictor(f"models:/{NAME}/{version}")
    predictions = load_predictor(f"models:/{NAME}/{version}", runtime="torch").predict(TEXTS)
    expected = Predictor(trained["good"]).predict(TEXTS)
    assert predictions["label"].tolist() == expected["label"].tolist()
    assert predictions["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-6)


def test_rollback_to_a_previous_champion_that_cannot_load_is_refused(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = register("bad")
    assert promote.run(["--force", "a first champion"]) == 0
    second = register("good")
    assert promote.run([]) == 0
    overwrite_inside(stored(first, "model_dir") / "model.safetensors")
    capsys.readouterr()  # what registering printed
    err = expect_user_error(promote_command(["--rollback", "testing"]), capsys)
    assert f"v{first} of '{NAME}' cannot be loaded, so it is not rolled back to" in err
    assert str(registry.version_by_alias(registry.client(), NAME, registry.CHAMPION).version) == second
