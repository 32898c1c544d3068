"""Picking a sweep's winner (`pipeline-pick-experiment`): ranked by validation, whole sweeps only. The rows
are shaped as `dvc.api.exp_show()` returns them; tests/e2e/test_sweeps.py runs the command on a real queue."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.registry.experiments import finished_experiments, ranked, refuse_partial_sweep, unfinished

VALIDATION = "reports/train/metrics.json:best_validation.accuracy"


def row(name: str, state: str | None, validation: float | None, rate: float) -> dict:
    return {
        "Experiment": name,
        "rev": name[:7],
        "typ": "branch_commit",
        "State": state,
        VALIDATION: validation,
        "reports/eval/metrics.json:accuracy": 0.5,
        "finetune.learning_rate": rate,
    }


BASELINE = {"Experiment": "", "rev": "workspace", "typ": "baseline", "State": None, VALIDATION: 0.99}


def test_the_best_by_validation_comes_first_and_the_baseline_is_not_an_experiment() -> None:
    rows = [BASELINE, row("exp-low", "Success", 0.70, 1e-4), row("exp-high", "Success", 0.80, 2e-4)]
    best_first = ranked(finished_experiments(rows, "accuracy", ["finetune.learning_rate"]), greater_is_better=True)
    assert [exp.name for exp in best_first] == ["exp-high", "exp-low"]
    assert best_first[0].changed == {"finetune.learning_rate": 2e-4}
    assert ranked(finished_experiments(rows, "accuracy", []), greater_is_better=False)[0].name == "exp-low"


def test_a_whole_sweep_is_let_through() -> None:
    rows = [BASELINE, row("exp-a", "Success", 0.7, 1e-4), row("exp-b", None, 0.8, 2e-4)]
    refuse_partial_sweep(unfinished(rows))


@pytest.mark.parametrize(
    ("state", "told"),
    [
        ("Failed", "failed: exp-lost): re-queue a failed one with `dvc exp run --queue -S ...`"),
        ("Running", "running: exp-lost): wait for `dvc queue status` to show none queued or running"),
        ("Queued", "queued: exp-lost)"),
    ],
)
def test_a_sweep_with_an_experiment_queued_running_or_failed_is_not_ranked_and_the_experiment_is_named(
    state: str, told: str
) -> None:
    rows = [BASELINE, row("exp-done", "Success", 0.7, 1e-4), row("exp-lost", state, None, 2e-4)]
    with pytest.raises(PipelineError) as refused:
        refuse_partial_sweep(unfinished(rows))
    assert told in str(refused.value) and str(refused.value).endswith("or rank the finished ones with --partial")
    # what --partial ranks: the finished experiment only
    assert [exp.name for exp in finished_experiments(rows, "accuracy", [])] == ["exp-done"]
