"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.errors import EXIT_USER_ERROR, PipelineError
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]


def set_params(root: Path, changes: dict[str, object]) -> None:
    """Change dotted keys of the project's params.yaml: {"finetune.learning_rate": 0.1}."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def raw_data(root: Path, source: Path) -> str:
    """Copy a data file or folder into the project's data/raw/, where a user's own data lives (the ingest
    stage depends on that folder), and return it as `ingest.source` names it."""
    import shutil

    target = root / "data" / "raw" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy(source, target)
    return target.relative_to(root).as_posix()


def error_for(**overrides: object) -> str:
    """The one-line error of the repository's params.yaml with dotted `overrides`."""
    with pytest.raises(PipelineError) as info:
        load_params(REPO / "params.yaml", overrides=overrides)
    return str(info.value)


def expect_user_error(main: Callable[[], None], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a stage's main, assert it exits with the user-error code, and return its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def benchmark_module(name: str):  # noqa: ANN201 (a module)
    """A benchmark of the benchmarks package, imported (the repository root is on pytest's pythonpath)."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def promote_command(argv: list[str]) -> Callable[[], None]:
    """`pipeline-promote ARGV` as a callable, for expect_user_error."""
    from pipeline.registry import promote

    def main() -> None:
        saved = sys.argv
        sys.argv = ["promote", *argv]
        try:
            promote.main()
        finally:
            sys.argv = saved

    return main


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    cmd: list[str], ready_url: str, env: dict[str, str], log: Path, timeout: float = 120
) -> Iterator[None]:
    """Start a server process, wait until `ready_url` answers 200, and stop it afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{ready_url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` of a registered model on 127.0.0.1, one worker, this interpreter's environment."""
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    return [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]  # fmt: skip


def guarded_serve_command(model_uri: str, port: int) -> list[str]:
    """`pipeline-serve` (MLflow's scoring server behind the pipeline's request guard) on 127.0.0.1."""
    return [sys.executable, "-m", "pipeline.serving.serve", "--model", model_uri, "--port", str(port), "--workers", "1"]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    """POST a body (JSON by default); (status, decoded JSON answer), for errors too."""
    import json
    import urllib.error

    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that uses this interpreter's virtual env (mlflow, dvc on PATH)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update(extra)
    return env


# int8 keeps each weight matrix in 256 levels, and how its products round differs between CPUs (AVX2,
# AVX-512 VNNI, AMX): its logits move a little from PyTorch's, so a decision whose logits sit that close to
# a boundary (argmax between two labels, a label's threshold) may go the other way on one CPU and not on
# another. The criterion that holds on every CPU: no logit moves by more than INT8_LOGIT_TOLERANCE (so only
# examples within that distance of a boundary can flip), and at most INT8_FLIPPED_SHARE of the examples flip.
INT8_LOGIT_TOLERANCE = 0.05  # the fixtures' largest move was 0.015 (fp32 training, AMD EPYC AVX-512)
INT8_FLIPPED_SHARE = 0.05  # of the test examples, and at least one: the fixtures' test splits hold 11-40


def assert_onnx_matches_pytorch() -> None:
    """The project's exported graphs against PyTorch on the test split, through the same Predictor code:
    the fp32 graph decides every example as PyTorch does and gives its logits (to 1e-4); the int8 graph's
    logits stay within INT8_LOGIT_TOLERANCE, and it decides all but INT8_FLIPPED_SHARE of the examples (at
    least one) alike: for tasks without example logits (NER), the share of sentences tagged otherwise."""
    import numpy as np

    from pipeline import data, paths
    from pipeline.prediction.inference import Predictor
    from pipeline.prediction.runtimes import ONNX_FILES

    test = data.read_table(paths.SPLIT / "test.parquet")
    eager = Predictor(paths.MODEL)
    reference = eager.task.outcomes(eager, test, "test split")
    assert set(ONNX_FILES) == {"onnx", "onnx-int8"}
    for runtime in ONNX_FILES:
        exported = Predictor(paths.MODEL, runtime=runtime, export_dir=paths.ONNX)
        result = eager.task.outcomes(exported, test, "test split")
        flipped = sum(a != b for a, b in zip(result.pred, reference.pred))
        if runtime == "onnx":
            assert flipped == 0, f"fp32 ONNX decides {flipped} of {len(test)} test examples otherwise"
            if reference.logits is not None:
                np.testing.assert_allclose(result.logits, reference.logits, atol=1e-4)
            continue
        allowed = max(1, int(INT8_FLIPPED_SHARE * len(reference.pred)))
        assert flipped <= allowed, f"int8 decides {flipped} of {len(reference.pred)} test examples otherwise"
        if reference.logits is not None:
            moved = float(np.abs(np.asarray(result.logits) - np.asarray(reference.logits)).max())
            assert moved <= INT8_LOGIT_TOLERANCE, f"an int8 logit moved by {moved:.3f} from PyTorch's"


def without_onnx_export() -> None:
    """The export stage's card for the project's model as it writes it for a model it cannot export: no
    ONNX runtime, so evaluate scores and registers PyTorch alone. For tests that never read the graphs."""
    from pipeline import data, paths
    from pipeline.data.sources import tree_sha256
    from pipeline.prediction.runtimes import EXPORT_CARD

    paths.ONNX.mkdir(parents=True, exist_ok=True)
    record = {"model_sha256": tree_sha256(paths.MODEL), "runtimes": {}, "skipped": "this test reads no graphs"}
    data.write_json(record, paths.ONNX / EXPORT_CARD)


def slow_steps_hook(folder: Path, seconds: float) -> Path:
    """A folder for PYTHONPATH whose sitecustomize makes each Trainer step sleep `seconds`, so a test can
    kill a training process between two checkpoints. Loaded only by the processes given that PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import time, transformers\n"
        "_step = transformers.Trainer.training_step\n"
        "def _slow_step(self, *args, **kwargs):\n"
        f"    time.sleep({seconds})\n"
        "    return _step(self, *args, **kwargs)\n"
        "transformers.Trainer.training_step = _slow_step\n"
    )
    return folder


ALL_STAGES = ["ingest", "split", "tokenize", "finetune", "export", "evaluate", "report"]


def sh(root: Path, *cmd: str) -> str:
    """Run a command in `root` as a user would (the venv's tools, the default MLflow store); its output."""
    env = venv_env(PIPELINE_CACHE_DIR=str(root.parent / "cache"))
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: mlflow.db in the project
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def commit(root: Path, message: str) -> None:
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)


def changed_stages(root: Path) -> set[str]:
    """The stages `dvc status` says must re-run (its JSON: stage name -> what changed)."""
    import json

    return set(json.loads(sh(root, "dvc", "status", "--json").strip().splitlines()[-1]))


def dvc_repro(root: Path, dry: bool = False) -> list[str]:
    """Run `dvc repro` and return the stages it ran, in order; `dry`: the stages it would run."""
    return re.findall(r"Running stage '(\w+)'", sh(root, "dvc", "repro", *(["--dry"] if dry else [])))


def dotted(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"ingest": {"format": "csv"}} -> {"ingest.format": "csv"}; a mapping under score_to_label stays whole."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "score_to_label":
            out |= dotted(value, f"{name}.")
        else:
            out[name] = value
    return out
