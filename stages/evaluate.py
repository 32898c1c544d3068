"""Stage 6: score the fine-tuned model on the test split and register it in MLflow.

Writes test metrics (DVC metrics) and the (actual, predicted) pairs for DVC's confusion plot, logs both to
the finetune stage's MLflow run, registers the model as a new version of `evaluate.registered_model_name`
and points the alias `evaluate.alias` (default `challenger`) at it. Promotion to `champion` is a separate
command, because it changes shared state. What is measured is pipeline/evaluation/assessment.py; how a version is
registered, pipeline/registry/registration.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import data, paths, tracking
from pipeline.card import ModelCard
from pipeline.data.tables import write_csv
from pipeline.errors import atomic_dir, stage_main
from pipeline.evaluation.assessment import Assessment, assess
from pipeline.params import load_params
from pipeline.registry.registration import input_example, log_assessment, register, training_run
from pipeline.tasks.registry import TASKS


@stage_main
def main() -> None:
    params = load_params()
    card = ModelCard.read(paths.MODEL)
    test_file = paths.SPLIT / "test.parquet"
    found = assess(params, card, test_file)  # stops here, registering nothing, if the model is not fit to

    tracking.configure(params.mlflow.experiment_name)
    with atomic_dir(paths.EVAL) as out:
        write_reports(found, out)
        with training_run(card):
            log_assessment(found, card, test_file)
            example = input_example(data.read_table(test_file).head(3), TASKS.for_task(card.task))
            registry = register(paths.MODEL, params.evaluate, card, found.metrics, example, found.runtimes["served"])
        data.write_json(registry, out / "registry.json")

    metrics, headline = found.metrics, TASKS.for_task(card.task).headline_metric
    low, high = metrics["ci95"][headline]
    served = found.runtimes["runtimes"][found.runtimes["served"]]
    print(
        f"evaluate: test {headline} {metrics[headline]:.4f} (95% CI {low:.4f}-{high:.4f}); "
        f"{metrics['vs_baseline']['verdict']}; registered {registry['name']} version {registry['version']} as "
        f"@{registry['alias']}, served by {found.runtimes['served']} ({headline} {served[headline]:.4f}, "
        f"{served['samples_per_second']:.0f} samples/s, {served['speedup']:.1f}x PyTorch)"
    )
    for flag in metrics["flags"]:
        print(f"evaluate: warning: {flag}")


def write_reports(found: Assessment, out: Path) -> None:
    """reports/eval: the metrics (DVC metrics), the confusion pairs and curves (DVC plots), the errors and
    the runtimes."""
    data.write_json({k: v for k, v in found.metrics.items() if k != "confusion_matrix"}, out / "metrics.json")
    data.write_json({k: v for k, v in found.baseline.items() if k != "confusion_matrix"}, out / "baseline.json")
    write_csv(found.confusion, out / "confusion.csv")
    write_curves(found.curves, out / "plots")
    write_csv(found.errors, out / "errors.csv")
    data.write_json(found.runtimes, out / "runtimes.json")


def write_curves(tables: dict[str, dict], folder: Path) -> None:
    """One CSV per curve under plots/{roc,pr,calibration}/, so `dvc plots` draws each folder as one plot."""
    for kind, curves_of_kind in tables.items():
        (folder / kind).mkdir(parents=True)
        for name, table in curves_of_kind.items():
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            write_csv(table, folder / kind / f"{safe}.csv")


if __name__ == "__main__":
    main()
