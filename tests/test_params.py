"""params.yaml is validated before any work; each mistake is one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.errors import PipelineError
from stages.params import load_params

REPO = Path(__file__).resolve().parents[1]


def error_for(**overrides: object) -> str:
    with pytest.raises(PipelineError) as info:
        load_params(REPO / "params.yaml", overrides=overrides)
    return str(info.value)


def test_the_repository_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.finetune.learning_rate > 0
    assert params.model.source.startswith("pypi:")


def test_unknown_key_is_named() -> None:
    assert "finetune.learnin_rate: unknown key" in error_for(**{"finetune.learnin_rate": 0.1})


def test_wrong_type_is_named() -> None:
    message = error_for(**{"finetune.per_device_train_batch_size": "many"})
    assert "finetune.per_device_train_batch_size" in message and "'many'" in message


def test_negative_learning_rate_is_refused() -> None:
    message = error_for(**{"finetune.learning_rate": -0.001})
    assert message.startswith(f"{REPO / 'params.yaml'}: finetune.learning_rate: ")
    assert "greater than 0" in message


def test_split_fractions_must_sum_to_one() -> None:
    message = error_for(**{"split.train": 0.7})
    assert "split: " in message and "sum to 1" in message


def test_missing_section_is_named(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["tokenize"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match="tokenize: required key is missing"):
        load_params(path)


def test_score_bins_need_one_name_more_than_thresholds() -> None:
    message = error_for(**{"ingest.score_to_label.names": ["only"]})
    assert "ingest.score_to_label" in message and "needs 2 names" in message


def test_unknown_task_is_refused() -> None:
    assert "task: " in error_for(task="regression")


def test_checksum_must_look_like_sha256() -> None:
    assert "model.sha256" in error_for(**{"model.sha256": "abc"})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nfinetune: [unclosed\n")
    with pytest.raises(PipelineError, match=r"params.yaml: line \d+: not valid YAML"):
        load_params(path)


def test_check_command_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["learning_rate"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "stages.params"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "finetune.learning_rate" in proc.stderr
