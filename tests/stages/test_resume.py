"""Resuming an interrupted finetune: a run killed with SIGKILL continues from its newest complete
checkpoint in the same MLflow run and ends with the weights of an uninterrupted run; checkpoints from
other params or with unreadable files are refused unless `finetune.on_bad_checkpoint: restart`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from builders import SCHEDULE, copy_of, inside
from helpers import expect_user_error, set_params, slow_steps_hook
from pipeline import paths, tracking
from pipeline.card import ModelCard
from pipeline.params import load_params
from pipeline.training import trainer
from pipeline.training.checkpoints import CHECKSUMS_FILE, RUN_FILE
from stages import finetune


def weights(model_dir: Path) -> dict:
    return load_file(model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tokenized: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`reference`: the model folder of an uninterrupted run; `interrupted`: a project whose finetune was
    killed with SIGKILL after its checkpoint at step 8 (run.json, checkpoints) — tests copy it."""
    base = tmp_path_factory.mktemp("resume")
    root = base / "interrupted"
    shutil.copytree(tokenized, root)
    set_params(root, SCHEDULE)
    env = {"PIPELINE_CACHE_DIR": str(base / "cache")}
    with inside(root, **env):
        finetune.main()
        shutil.copytree(paths.MODEL, base / "reference")
        shutil.rmtree(paths.MODEL)
    hook = slow_steps_hook(base / "hook", 0.25)
    child_env = {**os.environ, **env, "PYTHONPATH": str(hook)}
    child_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.finetune"],
        cwd=root,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = root / "checkpoints" / "checkpoint-8" / CHECKSUMS_FILE  # the last file a checkpoint gets
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the finetune ended before its checkpoint at step 8"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "checkpoints" / "checkpoint-16").exists()
    return {"reference": base / "reference", "interrupted": root, "cache": base / "cache"}


@pytest.fixture
def interrupted(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = copy_of(runs["interrupted"], tmp_path, monkeypatch)  # with a store of its own
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(runs["cache"]))
    return root


def test_killed_finetune_resumes_in_the_same_run_and_ends_like_an_uninterrupted_one(
    interrupted: Path, runs: dict[str, Path]
) -> None:
    killed_run = json.loads((paths.CHECKPOINTS / RUN_FILE).read_text())["mlflow_run_id"]
    newest = max(
        int(p.name.split("-")[1]) for p in paths.CHECKPOINTS.glob("checkpoint-*") if (p / CHECKSUMS_FILE).exists()
    )
    finetune.main()
    card, reference = ModelCard.read(paths.MODEL), ModelCard.read(runs["reference"])
    assert card.training.resumed_from_step == newest >= 8 and reference.training.resumed_from_step is None
    assert card.provenance.mlflow_run_id == killed_run != reference.provenance.mlflow_run_id
    assert card.training.global_step == reference.training.global_step == 16
    assert card.training.best_metric == reference.training.best_metric
    resumed, expected = weights(paths.MODEL), weights(runs["reference"])
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert (resumed[name] == expected[name]).all(), name
    # The learning curves hold the steps from before the kill, read back from the checkpoint.
    loss_steps = [
        int(line.split("\t")[0])
        for line in (paths.TRAIN_LOGS / "plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    ]
    assert loss_steps == list(range(1, 17))
    tracking.configure("sentiment-finetune")
    run = mlflow.MlflowClient().get_run(killed_run)
    assert run.info.status == "FINISHED" and run.data.metrics["train_seconds"] > 0
    # finetune.precision: auto, resolved on this machine and recorded with the run
    assert run.data.tags["precision"] == ("bf16" if trainer.mixed_precision(load_params().finetune) else "fp32")
    assert not paths.CHECKPOINTS.exists()


def test_cut_short_checkpoint_is_skipped_for_the_complete_one_before_it(interrupted: Path) -> None:
    complete = sorted(paths.CHECKPOINTS.glob("checkpoint-*"))[-1]
    partial = paths.CHECKPOINTS / "checkpoint-15"  # as if the kill came while it was being written
    shutil.copytree(complete, partial)
    (partial / CHECKSUMS_FILE).unlink()
    finetune.main()
    assert ModelCard.read(paths.MODEL).training.resumed_from_step == int(complete.name.split("-")[1])


def test_checkpoints_of_other_params_are_refused_then_discarded_when_asked(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(interrupted, {"finetune.learning_rate": 0.01})
    before = sorted(str(p) for p in paths.CHECKPOINTS.rglob("*"))
    err = expect_user_error(finetune.main, capsys)
    assert err == (
        "error: checkpoints: comes from other params, data or model; delete it, "
        "or set finetune.on_bad_checkpoint: restart"
    )
    assert sorted(str(p) for p in paths.CHECKPOINTS.rglob("*")) == before and not paths.MODEL.exists()

    set_params(interrupted, {"finetune.on_bad_checkpoint": "restart"})
    finetune.main()
    stats = ModelCard.read(paths.MODEL).training
    assert stats.resumed_from_step is None and stats.global_step == 16
    assert "training from the start" in capsys.readouterr().err


def test_a_truncated_checkpoint_file_is_refused(interrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = sorted(paths.CHECKPOINTS.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    weights_file = newest / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    err = expect_user_error(finetune.main, capsys)
    assert f"{weights_file} does not match its checksum" in err and "finetune.on_bad_checkpoint: restart" in err
    assert weights_file.exists() and not paths.MODEL.exists()


def test_resume_false_starts_over(interrupted: Path) -> None:
    set_params(interrupted, {"finetune.resume": False})
    finetune.main()
    assert ModelCard.read(paths.MODEL).training.resumed_from_step is None


def test_an_interrupted_adalora_run_starts_over(
    tokenized_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformers

    set_params(tokenized_project, {**SCHEDULE, "finetune.method": "adalora", "finetune.adalora.delta_t": 2})
    step = transformers.Trainer.training_step

    def interrupted_step(self, *args, **kwargs):
        if self.state.global_step == 10:
            raise KeyboardInterrupt  # as Ctrl-C after the checkpoint at step 8
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        finetune.main()
    assert (paths.CHECKPOINTS / "checkpoint-8").is_dir()
    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    finetune.main()
    stats = ModelCard.read(paths.MODEL).training
    assert stats.resumed_from_step is None and stats.global_step == 16
    assert "cannot be resumed" in capsys.readouterr().err
