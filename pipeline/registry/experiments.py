"""Choose hyperparameters in one step: rank the finished DVC experiments by validation, apply the winner.

    dvc exp run --queue -S 'finetune.learning_rate=3e-5,1e-4' -S 'finetune.num_train_epochs=2,3'
    dvc queue start --jobs 2          # wait: `dvc queue status`
    pipeline-pick-experiment          # the table, then `dvc exp apply <winner>`

Experiments are ranked by `best_validation.<finetune.metric_for_best_model>` of reports/train/metrics.json
(the evaluation whose weights the run kept), in the direction early stopping used. The test metrics are
shown beside them but never decide: choosing by the test split would make its score an optimistic
estimate of the chosen model. The experiments are those of the workspace's commit (`dvc exp show`).

A sweep is ranked whole or not at all: while an experiment is queued or running, or where one failed, the
pick stops and names them (`--partial` ranks the finished ones anyway). A failed experiment is not only the
user's: DVC's queue can fail one with two or more workers and no log (treeverse/dvc#10673), and a winner
picked from the survivors would quietly be the winner of another sweep.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError, stage_main
from pipeline.params import flat_params, load_params

TRAIN_METRICS = "reports/train/metrics.json"
TEST_METRICS = "reports/eval/metrics.json"
# The states `dvc exp show` gives an experiment that has no final result (a finished one: "Success" or none).
UNFINISHED_STATES = ("Queued", "Running", "Failed")


@dataclass(frozen=True)
class Finished:
    """One finished experiment, as `dvc exp show` lists it."""

    name: str
    rev: str
    validation: float
    test: float | None
    changed: dict[str, Any]


def column(row: dict[str, Any], file: str, key: str) -> Any:
    """A metric of `row`: dvc names a column by its key alone, or `file:key` where keys of two files clash."""
    value = row.get(f"{file}:{key}", row.get(key))
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def finished_experiments(rows: list[dict[str, Any]], metric: str, varying: list[str]) -> list[Finished]:
    """The experiments (not the baseline commit) that have a validation metric, i.e. that ran to the end."""
    finished = []
    for row in rows:
        if row.get("typ") == "baseline" or row.get("State") in UNFINISHED_STATES:
            continue
        validation = column(row, TRAIN_METRICS, f"best_validation.{metric}")
        if validation is None:
            continue
        finished.append(
            Finished(
                name=row.get("Experiment") or row["rev"],
                rev=row["rev"],
                validation=validation,
                test=column(row, TEST_METRICS, metric),
                changed={key: row.get(key) for key in varying},
            )
        )
    return finished


def unfinished(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The experiments still queued or running, and those that failed, by the state DVC reports."""
    states: dict[str, list[str]] = {}
    for row in rows:
        if row.get("typ") != "baseline" and row.get("State") in UNFINISHED_STATES:
            states.setdefault(row["State"].lower(), []).append(row.get("Experiment") or row["rev"])
    return states


def refuse_partial_sweep(states: dict[str, list[str]]) -> None:
    """Stop, naming the experiments that keep the sweep from being whole (see the module's doc)."""
    if not states:
        return
    listed = "; ".join(f"{state}: {', '.join(names)}" for state, names in states.items())
    hint = (
        "re-queue a failed one with `dvc exp run --queue -S ...` (`dvc queue logs NAME` says why it failed)"
        if "failed" in states
        else "wait for `dvc queue status` to show none queued or running"
    )
    raise PipelineError(f"the sweep is not whole ({listed}): {hint}, or rank the finished ones with --partial")


def varying_params(rows: list[dict[str, Any]], param_keys: list[str]) -> list[str]:
    """The params whose values differ between the experiments: the sweep's axes."""
    return [key for key in param_keys if len({repr(row.get(key)) for row in rows if key in row}) > 1]


def ranked(finished: list[Finished], greater_is_better: bool) -> list[Finished]:
    return sorted(finished, key=lambda exp: exp.validation, reverse=greater_is_better)


def table(experiments: list[Finished], metric: str) -> str:
    """A Markdown table, best first."""
    axes = list(experiments[0].changed) if experiments else []
    rows = [["rank", "experiment", *axes, f"validation {metric}", f"test {metric}"]]
    rows.append(["---"] * len(rows[0]))
    for rank, exp in enumerate(experiments, 1):
        test = f"{exp.test:.4f}" if exp.test is not None else "-"
        rows.append([str(rank), exp.name, *(str(exp.changed[key]) for key in axes), f"{exp.validation:.4f}", test])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pipeline-pick-experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-apply", action="store_true", help="print the ranking only")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="rank the finished experiments though others are still queued or running, or failed",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import dvc.api
    from dvc.repo import Repo

    params = load_params()
    metric = params.finetune.metric_for_best_model
    rows = dvc.api.exp_show()
    if not args.partial:
        refuse_partial_sweep(unfinished(rows))
    experiments = [row for row in rows if row.get("typ") != "baseline"]
    axes = varying_params(experiments, list(flat_params(params)))
    best_first = ranked(finished_experiments(rows, metric, axes), params.finetune.greater_is_better)
    if not best_first:
        raise PipelineError(
            f"no finished experiment of this commit has best_validation.{metric} in {TRAIN_METRICS} "
            "(queue some with `dvc exp run --queue -S ...`, run them with `dvc queue start`)"
        )
    print(table(best_first, metric))
    winner = best_first[0]
    if args.no_apply:
        print(f"\nbest by validation {metric}: {winner.name} (not applied: --no-apply)")
        return
    Repo().experiments.apply(winner.rev)
    print(f"\napplied {winner.name}: its params, dvc.lock and outputs are in the workspace; commit them to adopt it")


if __name__ == "__main__":
    main()
