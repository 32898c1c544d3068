"""Registry records and metric-gated promotion: what each version carries, when the champion moves,
when it does not, and that every decision can be read back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from builders import REPO
from helpers import expect_user_error, promote_command, set_params
from pipeline import paths, registry
from pipeline.card import ModelCard
from pipeline.evaluation.assessment import score
from pipeline.prediction.inference import Predictor
from pipeline.registry import promote

NAME = "sentiment-classifier"


def client() -> mlflow.MlflowClient:
    return registry.client()


def champion() -> str | None:
    version = registry.version_by_alias(client(), NAME, registry.CHAMPION)
    return None if version is None else str(version.version)


def accuracy(version: str) -> float:
    return float(client().get_model_version(NAME, version).tags["test_accuracy"])


def test_the_fixture_models_differ_enough_to_gate(register: Callable[..., str]) -> None:
    good, bad = register("good"), register("bad")
    assert accuracy(good) >= 0.9 and accuracy(bad) <= 0.7, (accuracy(good), accuracy(bad))


def test_a_version_records_its_provenance_and_metrics(register: Callable[..., str]) -> None:
    registered = register("good")
    version = client().get_model_version(NAME, registered)
    provenance = ModelCard.read(paths.MODEL).provenance
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    tags = version.tags
    assert tags["git_commit"] == provenance.git_commit and tags["git_dirty"] in ("true", "false")
    assert tags["data_sha256"] == provenance.data_sha256 and tags["params_sha256"] == provenance.params_sha256
    assert tags["task"] == "single_label_classification" and tags["method"] == "full"
    assert json.loads(tags["labels"]) == ["negative", "positive"]
    assert tags["mlflow_run_id"] == version.run_id
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1"):
        assert float(tags[f"test_{key}"]) == pytest.approx(metrics[key], abs=1e-6)
    assert "test accuracy" in version.description and version.description.count(". ") == 0


def test_the_logged_model_loads_without_the_repository(register: Callable[..., str], tmp_path: Path) -> None:
    """In a fresh interpreter outside the repo, the `pipeline` code comes from the model's own artifact."""
    register("good")
    script = (
        "import json, sys, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/sentiment-classifier@challenger')\n"
        "p = m.predict(['a great wonderful film'])\n"
        "print(json.dumps({'pipeline': sys.modules['pipeline'].__file__, 'label': p['label'][0],\n"
        "                  'signature': str(m.metadata.signature.inputs)}))\n"
    )
    env = {"MLFLOW_TRACKING_URI": registry.tracking.tracking_uri(), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/artifacts/code/pipeline/" in out["pipeline"]  # not the project's pipeline/, not the editable install
    assert not out["pipeline"].startswith((str(Path.cwd() / "pipeline"), str(REPO)))
    assert out["label"] in ("negative", "positive") and "string" in out["signature"]
    model_files = {p.name for p in Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@challenger")).rglob("*")}
    assert {"model.safetensors", "tokenizer.json", "training.json", "input_example.json", "MLmodel"} <= model_files


def test_first_model_becomes_champion_only_above_the_floor(
    register: Callable[..., str], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = register("bad")
    assert promote.run([]) == promote.EXIT_REFUSED
    assert f"refused v{bad}" in capsys.readouterr().err and champion() is None
    good = register("good")
    assert promote.run([]) == 0
    assert champion() == good


def test_promoting_the_champion_again_changes_nothing(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = register("good")
    promote.run([])
    assert promote.run([]) == 0 and "already is @champion" in capsys.readouterr().out
    assert champion() == good and len(registry.decisions(client(), NAME)) == 1


def test_challenger_that_wins_by_the_margin_is_promoted(register: Callable[..., str], project: Path) -> None:
    set_params(project, {"promote.floor": 0.0})
    bad = register("bad")
    assert promote.run([]) == 0 and champion() == bad
    good = register("good")
    assert promote.run([]) == 0
    assert champion() == good
    assert client().get_model_version(NAME, good).tags[registry.PREVIOUS_CHAMPION_TAG] == bad


def test_challenger_that_loses_is_refused_with_both_numbers(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = register("good")
    assert promote.run([]) == 0
    bad = register("bad")
    assert promote.run([]) == promote.EXIT_REFUSED
    err = capsys.readouterr().err
    assert f"{accuracy(bad):.4f}" in err and f"{accuracy(good):.4f}" in err
    assert champion() == good


def test_an_identical_model_is_refused_as_indistinguishable(
    register: Callable[..., str], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = register("good")
    assert promote.run([]) == 0
    register("good")
    assert promote.run([]) == promote.EXIT_REFUSED  # +0.0000 < +0.05
    assert "gain below the required +0.0500" in capsys.readouterr().err
    set_params(project, {"promote.min_improvement": 0.0})
    register("good")
    assert promote.run([]) == promote.EXIT_REFUSED and champion() == first  # +0.0000 >= 0, but it is noise
    err = capsys.readouterr().err
    assert "accuracy 1.0000 vs 1.0000: +0.0000" in err and "not significantly better (p = 1.000 >= alpha 0.05)" in err
    decision = registry.decisions(client(), NAME)[-1]
    assert (decision["result"], decision["p_value"], decision["difference"]) == ("refused", 1.0, 0.0)


def test_dry_run_decides_but_changes_nothing(register: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    good = register("good")
    assert promote.run(["--dry-run"]) == 0
    assert "would promote" in capsys.readouterr().out
    assert champion() is None and registry.decisions(client(), NAME) == []
    assert promote.run([]) == 0
    register("bad")
    assert promote.run(["--dry-run"]) == promote.EXIT_REFUSED and champion() == good


def test_force_promotes_a_loser_and_records_the_reason(register: Callable[..., str]) -> None:
    register("good")
    promote.run([])
    bad = register("bad")
    assert promote.run(["--force", "hotfix for label drift"]) == 0
    assert champion() == bad
    last = registry.decisions(client(), NAME)[-1]
    assert last["result"] == "forced" and last["reason"] == "hotfix for label drift" and not last["wins"]
    assert last["candidate_value"] == accuracy(bad) and last["champion_value"] == accuracy(last["champion"])


def test_rollback_returns_to_the_previous_champion(
    register: Callable[..., str], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {"promote.floor": 0.0})
    bad = register("bad")
    promote.run([])
    good = register("good")
    promote.run([])
    assert promote.run(["--rollback", "latency regression"]) == 0
    assert champion() == bad
    capsys.readouterr()
    err = expect_user_error(promote_command(["--rollback", "again"]), capsys)
    assert f"v{bad}" in err and "no previous champion" in err
    actions = [(d["action"], d["result"]) for d in registry.decisions(client(), NAME)]
    assert actions == [("promote", "promoted"), ("promote", "promoted"), ("rollback", "rolled back")]
    assert registry.decisions(client(), NAME)[-1]["from"] == good


def test_history_lists_every_decision_with_who_and_why(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = register("good")
    promote.run([])
    bad = register("bad")
    promote.run([])
    capsys.readouterr()
    promote.run(["--history"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "promoted" in lines[0] and f"v{good}" in lines[0] and "floor" in lines[0]
    assert "refused" in lines[1] and f"v{bad} over v{good}" in lines[1]


def test_champion_from_another_test_set_is_rescored_on_the_challengers(
    register: Callable[..., str], project: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {"promote.min_improvement": 0.0, "promote.floor": 0.0})
    bad = register("bad", split="split_a")
    promote.run([])
    candidate = register("good", split="split_b")
    assert promote.run([]) == 0
    assert "re-scoring" in capsys.readouterr().out
    decision = registry.decisions(client(), NAME)[-1]
    expected, _ = score(Predictor(trained["bad"]), pd.read_parquet(trained["split_b"] / "test.parquet"))
    assert decision["rescored_champion"] and decision["champion"] == bad and decision["candidate"] == candidate
    assert decision["champion_value"] == pytest.approx(expected["accuracy"]) and decision["p_value"] < 0.05


def test_promotions_wait_for_each_other(register: Callable[..., str], project: Path) -> None:
    """While one promotion holds the registry lock another cannot move the alias; two started at the same
    moment therefore decide one after the other: one wins, the other is compared with the winner."""
    set_params(project, {"promote.floor": 0.0})
    register("bad")
    promote.run([])
    first, second = register("good"), register("good")
    cmd = [sys.executable, "-m", "pipeline.registry.promote", "--version"]
    with registry.exclusive(NAME):
        procs = [
            subprocess.Popen([*cmd, v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for v in (first, second)
        ]
        lock = registry.lock_path(NAME).resolve()
        deadline = time.monotonic() + 90
        while not all(holds_open(p.pid, lock) for p in procs):  # both reached the lock and wait there
            assert all(p.poll() is None for p in procs), "a promotion finished while the lock was held"
            assert time.monotonic() < deadline, "the promotions never reached the lock"
            time.sleep(0.2)
        time.sleep(1)
        assert all(p.poll() is None for p in procs) and champion() not in (first, second)
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) == [0, promote.EXIT_REFUSED], [p.stderr.read() for p in procs]
    winner = (first, second)[codes.index(0)]
    loser = (first, second)[codes.index(promote.EXIT_REFUSED)]
    assert champion() == winner
    refusal = [d for d in registry.decisions(client(), NAME) if d["result"] == "refused"]
    assert len(refusal) == 1 and refusal[0]["candidate"] == loser and refusal[0]["champion"] == winner


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    try:
        return any(Path(fd).resolve() == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_promote_without_a_tracking_store_or_challenger_is_a_one_line_error(
    register: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_user_error(promote_command([]), capsys)
    assert "mlflow.db: no MLflow tracking store" in err and not Path("mlflow.db").exists()
    register("good")
    client().delete_registered_model_alias(NAME, registry.CHALLENGER)
    capsys.readouterr()
    err = expect_user_error(promote_command([]), capsys)
    assert "no @challenger" in err


def test_force_needs_a_reason(project: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        promote.run(["--force", " "])
    assert exit_info.value.code == 2


def test_report_shows_the_champion_and_the_gates_verdict(register: Callable[..., str]) -> None:
    from pipeline.params import load_params
    from stages import report

    def section() -> str:
        registered = json.loads((paths.EVAL / "registry.json").read_text())
        metrics = json.loads((paths.EVAL / "metrics.json").read_text())
        return report.champion_section(registered, metrics, load_params().promote, ("accuracy", "macro_f1"))

    register("good")
    assert "No `@champion` yet" in section()
    promote.run([])
    assert "This version is the current `@champion`" in section()
    register("bad")
    text = section()
    assert f"| champion v1 | {accuracy('1'):.4f}" in text and "would not be promoted" in text
    register("good", split="split_b")
    assert "re-scores it" in section()


def test_require_beats_baseline_refuses_to_register_a_model_that_does_not(
    register: Callable[..., str], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(project, {"evaluate.require_beats_baseline": True})
    with pytest.raises(SystemExit) as exit_info:
        register("bad")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("error: evaluate: not registered (evaluate.require_beats_baseline): the fine-tuned model")
    assert not (project / "mlflow.db").exists() and not paths.EVAL.exists()
    set_params(project, {"evaluate.require_beats_baseline": False})  # the default: registered, with the verdict
    assert register("bad") == "1"
    assert not json.loads((paths.EVAL / "metrics.json").read_text())["vs_baseline"]["beats_baseline"]
