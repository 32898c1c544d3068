"""Metric-gated promotion of the registered model: a command, not a DVC stage, because it changes shared
state (the registry's aliases) that other people and servers read.

    pipeline-promote                      # promote @challenger to @champion if it wins
    pipeline-promote --version 7          # the same for a given version
    pipeline-promote --dry-run            # print the decision, change nothing
    pipeline-promote --force "reason"     # promote even if it loses; the reason is recorded
    pipeline-promote --rollback "reason"  # move @champion back to the previous champion
    pipeline-promote --history            # every decision so far, oldest first

(`python -m pipeline.registry.promote ...` is the same command.)

The challenger wins when, on the same test examples (the challenger's test set), its test metric
(`promote.metric`) beats the champion's by at least `promote.min_improvement` *and* a paired bootstrap
finds the gain significant at `promote.alpha`: a gain of a handful of texts is noise, and refused as
"not significantly better". Each model's per-example outcomes come from its evaluate run; a champion
evaluated on another test set (or registered before outcomes were logged) is re-scored on the
challenger's first. The first model becomes champion if it reaches `promote.floor`. The decision records
both values, the difference, its 95 % interval and the p-value. Exit codes: 0 promoted (or would be, with
--dry-run), 1 refused, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow

from pipeline import data, registry
from pipeline.errors import PipelineError, stage_main
from pipeline.evaluation.statistics import OUTCOMES_ARTIFACT, PairedComparison, paired_bootstrap
from pipeline.params import load_params
from pipeline.prediction.inference import load_predictor
from pipeline.schema import PromoteParams
from pipeline.tasks.scoring import SCORINGS

EXIT_REFUSED = 1


def _outcomes(name: str, version: Any, test: Callable[[], Any]) -> tuple[list[str], list[Any], list[Any]]:
    """(labels, true, predicted) of a version on the comparison's test set: logged by its evaluate run when
    that run used this test set, else re-scored (`test()` gives the table)."""
    run_id = version.tags.get("mlflow_run_id")
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{OUTCOMES_ARTIFACT}")
        return logged["labels"], logged["true"], logged["pred"]
    except (mlflow.exceptions.MlflowException, OSError, KeyError):
        pass  # registered before per-example outcomes were logged
    print(f"promote: re-scoring v{version.version} on the test set of the comparison")
    predictor = load_predictor(f"models:/{name}/{version.version}")
    result = predictor.task.outcomes(predictor, test(), "the comparison's test set")
    return predictor.labels, result.true, result.pred


def compare(name: str, challenger: Any, champion: Any, params: PromoteParams) -> tuple[PairedComparison, bool]:
    """The paired comparison of challenger and champion on the challenger's test set, and whether the
    champion had to be re-scored for it (it was evaluated on another test set)."""
    run_id = challenger.tags.get("mlflow_run_id")
    table: list[Any] = []

    def test() -> Any:  # downloaded once, and only when a model must be re-scored
        if not table:
            try:
                file = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/evaluation/test.parquet")
            except mlflow.exceptions.MlflowException:
                raise PipelineError(
                    f"version {challenger.version}: its test set (run {run_id}, evaluation/test.parquet) is not in "
                    "the tracking store"
                ) from None
            table.append(data.read_table(Path(file)))
        return table[0]

    labels, true, pred = _outcomes(name, challenger, test)
    same_test_set = champion.tags.get("test_data_sha256") == challenger.tags.get("test_data_sha256")
    if same_test_set:
        _, champion_true, champion_pred = _outcomes(name, champion, test)
    else:
        print(
            f"promote: champion v{champion.version} was evaluated on another test set; re-scoring it on "
            f"v{challenger.version}'s"
        )
        predictor = load_predictor(f"models:/{name}/{champion.version}")
        rescored = predictor.task.outcomes(predictor, test(), f"v{challenger.version} test set")
        champion_true, champion_pred = rescored.true, rescored.pred
    if champion_true != true:
        raise PipelineError(
            f"v{champion.version} and v{challenger.version}: their outcomes are not on the same examples"
        )
    task = SCORINGS.for_task(challenger.tags["task"])
    if params.metric not in task.summary_metrics:
        raise PipelineError(
            f"promote.metric: '{params.metric}' is not a test metric ({', '.join(task.summary_metrics)})"
        )

    def scores(t: list, p: list) -> dict[str, float]:
        return task.summary_scores(t, p, labels)

    comparison = paired_bootstrap(scores, true, pred, champion_pred, params.metric, params.bootstrap_rounds, seed=0)
    return comparison, not same_test_set


def decide(name: str, challenger: Any, champion: Any | None, params: PromoteParams) -> dict[str, Any]:
    """Compare a version with the current champion (or the floor) and say whether it should be promoted."""
    metric = params.metric
    value = registry.test_metric(challenger, metric)
    decision: dict[str, Any] = {"metric": metric, "candidate": str(challenger.version), "candidate_value": value}
    if champion is None:
        decision.update(champion=None, floor=params.floor, wins=value >= params.floor)
        decision["why"] = (
            f"first champion: {metric} {value:.4f} {'>=' if decision['wins'] else '<'} floor {params.floor:.4f}"
        )
        return decision
    comparison, rescored = compare(name, challenger, champion, params)
    large_enough = comparison.difference >= params.min_improvement
    significant = comparison.significant(params.alpha)
    decision.update(
        champion=str(champion.version),
        candidate_value=comparison.a,
        champion_value=comparison.b,
        difference=comparison.difference,
        ci95=list(comparison.interval),
        p_value=comparison.p_value,
        rescored_champion=rescored,
        min_improvement=params.min_improvement,
        alpha=params.alpha,
        wins=large_enough and significant,
    )
    if not large_enough:
        verdict = f"gain below the required {params.min_improvement:+.4f}"
    elif not significant:
        verdict = f"not significantly better (p = {comparison.p_value:.3f} >= alpha {params.alpha})"
    else:
        verdict = f"a significant gain of at least {params.min_improvement:+.4f}"
    decision["why"] = (
        f"challenger v{challenger.version} vs champion v{champion.version}: {comparison.describe()}; {verdict}"
    )
    return decision


def promote(name: str, version: str | None, params: PromoteParams, *, dry_run: bool, force_reason: str | None) -> int:
    mlflow_client = registry.client()
    with registry.exclusive(name):  # decide and move the alias as one step (see registry.exclusive)
        if version is None:
            challenger = registry.version_by_alias(mlflow_client, name, registry.CHALLENGER)
            if challenger is None:
                raise PipelineError(f"registered model '{name}' has no @{registry.CHALLENGER} (run the pipeline first)")
        else:
            challenger = registry.get_version(mlflow_client, name, version)
        champion = registry.version_by_alias(mlflow_client, name, registry.CHAMPION)
        if champion is not None and str(champion.version) == str(challenger.version):
            print(f"promote: v{challenger.version} already is @{registry.CHAMPION}; nothing to do")
            return 0
        decision = decide(name, challenger, champion, params)
        promoted = decision["wins"] or force_reason is not None
        verdict = "promote" if promoted else "refuse"
        if dry_run:
            print(f"promote (dry run): would {verdict} v{challenger.version} — {decision['why']}")
            return 0 if promoted else EXIT_REFUSED
        decision.update(
            action="promote",
            result="forced" if promoted and not decision["wins"] else ("promoted" if promoted else "refused"),
            reason=force_reason,
        )
        if promoted:
            registry.require_loadable(name, decision["candidate"], "promoted")
            mlflow_client.set_registered_model_alias(name, registry.CHAMPION, decision["candidate"])
            if decision["champion"] is not None:
                mlflow_client.set_model_version_tag(
                    name, decision["candidate"], registry.PREVIOUS_CHAMPION_TAG, decision["champion"]
                )
        registry.record_decision(
            mlflow_client,
            name,
            [decision["candidate"]] + ([decision["champion"]] if decision["champion"] else []),
            decision,
        )
    if promoted:
        print(
            f"promote: {decision['result']} v{challenger.version} to @{registry.CHAMPION} — {decision['why']}"
            + (f"; reason: {force_reason}" if force_reason else "")
        )
        return 0
    print(f"promote: refused v{challenger.version} — {decision['why']}", file=sys.stderr)
    return EXIT_REFUSED


def rollback(name: str, reason: str) -> int:
    mlflow_client = registry.client()
    with registry.exclusive(name):
        champion = registry.version_by_alias(mlflow_client, name, registry.CHAMPION)
        if champion is None:
            raise PipelineError(f"registered model '{name}' has no @{registry.CHAMPION} to roll back")
        previous = champion.tags.get(registry.PREVIOUS_CHAMPION_TAG)
        if previous is None:
            raise PipelineError(
                f"@{registry.CHAMPION} v{champion.version} of '{name}' has no previous champion to roll back to"
            )
        registry.get_version(mlflow_client, name, previous)
        registry.require_loadable(name, previous, "rolled back to")
        mlflow_client.set_registered_model_alias(name, registry.CHAMPION, previous)
        registry.record_decision(
            mlflow_client,
            name,
            [str(champion.version), previous],
            {
                "action": "rollback",
                "result": "rolled back",
                "from": str(champion.version),
                "to": previous,
                "reason": reason,
            },
        )
    print(f"promote: rolled @{registry.CHAMPION} back from v{champion.version} to v{previous}; reason: {reason}")
    return 0


def history(name: str) -> int:
    for entry in registry.decisions(registry.client(), name):
        subject = (
            f"v{entry['from']} -> v{entry['to']}"
            if entry["action"] == "rollback"
            else f"v{entry['candidate']}" + (f" over v{entry['champion']}" if entry.get("champion") else "")
        )
        details = entry.get("why") or ""
        reason = f" reason: {entry['reason']}" if entry.get("reason") else ""
        print(
            f"{entry['time']}  {entry['user']}@{entry['host']}  {entry['action']:<8} {entry['result']:<11} {subject}  "
            f"{details}{reason}"
        )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.registry.promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help="model version to promote (default: the @challenger alias)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="print the decision and change nothing")
    action.add_argument("--force", metavar="REASON", help="promote even if the gate refuses; REASON is recorded")
    action.add_argument("--rollback", metavar="REASON", help="move @champion back to the previous champion")
    action.add_argument("--history", action="store_true", help="print every recorded decision")
    args = parser.parse_args(argv)
    for flag in ("force", "rollback"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            parser.error(f"--{flag} needs a non-empty reason")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Promotion reads a test table and loads the version from the store: no progress bars between the
    # command's own lines (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true brings them back).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    params = load_params(args.params)
    name = params.evaluate.registered_model_name
    if args.history:
        return history(name)
    if args.rollback is not None:
        return rollback(name, args.rollback)
    return promote(name, args.version, params.promote, dry_run=args.dry_run, force_reason=args.force)


@stage_main
def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
