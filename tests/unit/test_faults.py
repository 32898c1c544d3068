"""Faults and hostile input: no non-finite model is saved, registered or served; nothing runs code from a
model folder or asks on stdin; every bad input is one line naming the file, row or key."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import expect_user_error, raw_data, set_params
from pipeline import paths
from pipeline.data.sources import resolve, tree_sha256
from pipeline.errors import PipelineError, atomic_dir, atomic_file
from pipeline.prediction.inference import Predictor
from pipeline.serving import predict
from stages import evaluate, finetune, ingest, tokenize


def poison(model_dir: Path) -> None:
    """Set one weight matrix of a saved model to NaN (what a diverged or corrupted run leaves)."""
    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    name = next(n for n in tensors if n.endswith("query.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, file, metadata={"format": "pt"})


# ---- non-finite models --------------------------------------------------------------------------------


def test_a_nan_model_is_neither_loaded_for_prediction_nor_registered(
    project: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(trained["good"], paths.MODEL)
    shutil.copytree(trained["split_a"], paths.SPLIT)
    poison(paths.MODEL)
    with pytest.raises(
        PipelineError, match=r"models/model: the model has \d+ non-finite values in .*query.weight; refused"
    ):
        Predictor(paths.MODEL)
    err = expect_user_error(evaluate.main, capsys)
    assert "non-finite values" in err and not Path("mlflow.db").exists() and not paths.EVAL.exists()


def test_a_nan_loss_stops_training_with_one_line_and_saves_nothing(
    tokenized_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumable checkpoint whose weights went NaN (its checksums intact: a diverged run, not a corrupt
    file): resuming hits a NaN loss at once, which stops the stage instead of training on."""
    checkpoint = interrupted_run(tokenized_project, monkeypatch)
    poison(checkpoint)
    from pipeline.training.checkpoints import CHECKSUMS_FILE, ChecksumCheckpoints

    (checkpoint / CHECKSUMS_FILE).unlink()

    class Args:
        output_dir, should_save = str(paths.CHECKPOINTS), True

    class State:
        global_step = 4

    ChecksumCheckpoints().on_save(Args(), State(), None)  # re-sealed: its files now match
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        finetune.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and lines[0].startswith("finetune: resuming from checkpoints/checkpoint-4")
    assert lines[-1].startswith("error: finetune: the training loss is nan at step 5; stopped, no model saved")
    assert not paths.MODEL.exists()


# ---- corrupt checkpoints ------------------------------------------------------------------------------


def interrupted_run(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finetune stopped after its checkpoint at step 4 (of 8); returns that checkpoint."""
    import transformers

    set_params(root, {"finetune.max_steps": 8, "finetune.eval_steps": 4})
    step = transformers.Trainer.training_step

    def interrupted_step(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if self.state.global_step >= 5:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        finetune.main()
    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    return paths.CHECKPOINTS / "checkpoint-4"


def test_a_checkpoint_overwritten_inside_with_its_header_intact_is_refused_then_restarted(
    tokenized_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = interrupted_run(tokenized_project, monkeypatch)
    capsys.readouterr()
    weights = checkpoint / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\xff" * 4096  # NaN bit patterns, the header untouched
    weights.write_bytes(bytes(raw))
    err = expect_user_error(finetune.main, capsys)
    assert f"{weights} does not match its checksum" in err and "finetune.on_bad_checkpoint: restart" in err
    set_params(tokenized_project, {"finetune.on_bad_checkpoint": "restart"})
    finetune.main()
    assert "training from the start" in capsys.readouterr().err


def test_a_corrupt_trainer_state_of_the_only_checkpoint_is_refused_not_silently_restarted(
    tokenized_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = interrupted_run(tokenized_project, monkeypatch)
    capsys.readouterr()
    shutil.rmtree(paths.CHECKPOINTS / "checkpoint-8", ignore_errors=True)
    (checkpoint / "trainer_state.json").write_text("{ corrupt")
    err = expect_user_error(finetune.main, capsys)
    assert "trainer_state.json does not match its checksum" in err


def test_a_run_killed_before_its_first_checkpoint_starts_a_new_mlflow_run(
    tokenized_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths.CHECKPOINTS.mkdir()
    (paths.CHECKPOINTS / "run.json").write_text(json.dumps({"fingerprint": "x", "mlflow_run_id": "gone"}))
    set_params(tokenized_project, {"finetune.max_steps": 2})
    from pipeline.params import load_params
    from pipeline.training.checkpoints import checkpoint_to_resume

    assert checkpoint_to_resume(paths.CHECKPOINTS, "x", load_params().finetune) == (None, None)
    assert "holds no complete checkpoint; training from the start" in capsys.readouterr().err
    assert not paths.CHECKPOINTS.exists()


# ---- the model folder: limits, remote code, pickle ------------------------------------------------------


def test_max_length_beyond_the_models_positions_stops_before_any_work(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {"tokenize.max_length": 1024})  # the tiny model has 128 positions
    ingest.main()
    from stages import split

    split.main()
    err = expect_user_error(tokenize.main, capsys)
    assert err.startswith("error: tokenize.max_length: 1024 exceeds the 128 positions of the model"), err
    assert not paths.TOKENIZED.exists()


def test_a_model_folder_that_brings_its_own_code_is_refused_without_a_prompt(
    project: Path, tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="not-a-known-type", auto_map={"AutoConfig": "evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('ran the folder code')\n")
    set_params(project, {"model.source": str(folder)})
    # stdin is a terminal-less pipe that would answer "y": nothing must read it.
    proc = subprocess.run(
        [sys.executable, "-m", "stages.tokenize"], cwd=project, input="y\n", capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(project)},
    )  # fmt: skip
    assert proc.returncode == 2 and "ran the folder code" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "brings its own Python code (auto_map); refused" in last, proc.stderr


def test_pickle_weights_are_refused_with_how_to_convert(trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(trained["good"], folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(PipelineError, match=r"weights in pickle format .* are refused.*save_pretrained"):
        Predictor(folder)


# ---- sources ------------------------------------------------------------------------------------------


def test_a_sha256_pin_on_a_local_folder_is_checked(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    pin = tree_sha256(folder)
    assert resolve(str(folder), pin, key="model.source") == folder
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(PipelineError, match=r"model: checksum mismatch for model.source: expected sha256 .* \(folder"):
        resolve(str(folder), pin, key="model.source")
    assert tree_sha256(folder) != pin  # the checkpoint fingerprint (finetune._model_hash) follows the weights


def test_a_path_into_a_local_archive_is_opened_like_a_package_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"1\t1.0\tgood\n"
        info = tarfile.TarInfo("inner/reviews.tsv")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    found = resolve(str(archive / "inner" / "reviews.tsv"), key="ingest.source")
    assert found.read_bytes() == payload and str(tmp_path / "cache") in str(found)
    with pytest.raises(PipelineError, match="data.tar.gz: checksum mismatch for ingest.source"):
        resolve(str(archive / "inner" / "reviews.tsv"), "0" * 64, key="ingest.source")
    with pytest.raises(PipelineError, match=r"data.tar.gz: no 'inner/other.tsv' inside"):
        resolve(str(archive / "inner" / "other.tsv"), key="ingest.source")


CSV_WITH_HEADER = {
    "ingest.format": "csv",
    "ingest.header": True,
    "ingest.column_names": None,
    "ingest.label_column": "label",
    "ingest.score_to_label": None,
}


# ---- data and params ----------------------------------------------------------------------------------


def test_a_header_only_csv_is_one_line(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("text,label\n")
    set_params(project, {"ingest.source": raw_data(project, source), **CSV_WITH_HEADER})
    assert expect_user_error(ingest.main, capsys) == "error: data/raw/empty.csv: no records (only a header, or nothing)"


@pytest.mark.parametrize("missing", ["NaN", "nan", "NA", "null", "None"])
def test_a_label_written_as_nan_is_a_missing_label_not_a_class(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    source = tmp_path / "labels.csv"
    source.write_text(f"text,label\ngood film,pos\nbad film,neg\nfine film,{missing}\n")
    set_params(project, {"ingest.source": raw_data(project, source), **CSV_WITH_HEADER})
    err = expect_user_error(ingest.main, capsys)
    assert err == "error: data/raw/labels.csv: line 4: missing label in column 'label'"


@pytest.mark.parametrize("value", [True, 2.5, "3"])
def test_integer_params_take_whole_numbers_only(value: object) -> None:
    from builders import REPO
    from pipeline.params import load_params

    with pytest.raises(PipelineError, match=r"finetune.early_stopping_patience: Input should be a valid integer"):
        load_params(REPO / "params.yaml", overrides={"finetune.early_stopping_patience": value})


# ---- batch prediction ---------------------------------------------------------------------------------


def run_predict(trained: dict[str, Path], source: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        sys.argv = ["predict", "--model", str(trained["good"]), "--input", str(source), "--output", str(target)]
        predict.main()
    assert exit_info.value.code == 2 and not target.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_parquet_input_that_is_not_parquet_is_one_line(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", sys.argv)
    source = tmp_path / "texts.parquet"
    source.write_text("text\nnot parquet at all\n")
    assert f"{source}: cannot read as parquet" in run_predict(trained, source, tmp_path / "out.csv", capsys)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("texts.jsonl", b'{"text": "a fine film"}\n{"text": "good"}\n{"text": broken}\n', "line 3: invalid JSON"),
        (
            "texts.jsonl",
            b'{"text": "a fine film"}\n{"text": "bad \xff byte"}\n',
            "line 2: bytes do not decode as utf-8",
        ),
        ("texts.csv", b"text\na fine film\ngood\nbad \xff byte\n", "line 4: bytes do not decode as utf-8"),
    ],
    ids=["jsonl-bad-json", "jsonl-bad-utf8", "csv-bad-utf8"],
)
def test_batch_prediction_errors_name_the_line(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str, content: bytes, message: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "argv", sys.argv)
    source = tmp_path / name
    source.write_bytes(content)
    assert f"{source}: {message}" in run_predict(trained, source, tmp_path / "out.csv", capsys)


# ---- outputs ------------------------------------------------------------------------------------------


def test_a_stage_removes_the_temporaries_of_killed_runs_and_keeps_live_ones(tmp_path: Path) -> None:
    target = tmp_path / "model"
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    stale = [tmp_path / f".model.{dead.pid}.abc123.tmp", tmp_path / f".model.{dead.pid}.def456.tmp"]
    stale[0].mkdir()
    stale[1].write_text("half a file")
    live = tmp_path / f".model.{os.getppid()}.xyz789.tmp"  # a process that is running
    live.mkdir()
    unrelated = tmp_path / ".other.123.abc.tmp"
    unrelated.mkdir()
    with atomic_dir(target) as out:
        (out / "weights").write_text("w")
    assert not any(p.exists() for p in stale) and live.exists() and unrelated.exists()
    assert (target / "weights").read_text() == "w"


def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "folder") as folder:
            # a writer that makes its file private, as safetensors does with model.safetensors
            (folder / "sub").mkdir(mode=0o700)
            for name in ("weights", "sub/tokenizer.json", "run.sh"):
                (folder / name).write_text("x")
                (folder / name).chmod(0o700 if name == "run.sh" else 0o600)
        with atomic_file(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "folder", *(tmp_path / "folder").rglob("*")]}
    assert modes == {"folder": 0o755, "sub": 0o755, "weights": 0o644, "tokenizer.json": 0o644, "run.sh": 0o755}
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o644
