"""Stage 6: a human-readable Markdown report with figures.

Shows the data card, the fine-tuned model's test metrics beside a TF-IDF + logistic-regression baseline
trained on the same split (so the gain of fine-tuning is visible) and beside the registry's current
`@champion`, per-class scores, learning curves and the confusion matrix.

The champion is read from the tracking store when the report is written: it is shared state outside
DVC's dependencies, so the report says when it looked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from pipeline import data, paths, registry
from pipeline.card import ModelCard
from pipeline.errors import PipelineError, atomic_dir, atomic_file, stage_main
from pipeline.params import load_params
from pipeline.schema import PromoteParams
from pipeline.tasks.registry import TASKS


def _read_curve(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / "plots" / "metrics" / f"{name}.tsv"
    return pd.read_csv(path, sep="\t") if path.exists() else None


def plot_learning_curves(logs: Path, metric: str, target: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, label in (("train/loss", "train loss"), ("eval/loss", "validation loss")):
        curve = _read_curve(logs, name)
        if curve is not None:
            left.plot(curve["step"], curve.iloc[:, -1], marker="o" if name.startswith("eval") else None, label=label)
    left.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    left.legend()
    for path in sorted((logs / "plots" / "metrics" / "eval").glob("*.tsv")):
        if path.stem != "loss":
            curve = pd.read_csv(path, sep="\t")
            right.plot(curve["step"], curve.iloc[:, -1], marker="o", label=f"validation {path.stem}")
    right.set(xlabel="optimizer step", title=f"Validation metrics (early stopping on {metric})")
    right.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str, target: Path) -> None:
    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (row, col), count in np.ndenumerate(values):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > values.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def plot_per_class(model: dict, baseline: dict, labels: list[str], target: Path) -> None:
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels) + 2), 3.4))
    ax.bar(x - 0.2, [model["per_class"][c]["f1"] for c in labels], 0.4, label="fine-tuned")
    ax.bar(x + 0.2, [baseline["per_class"][c]["f1"] for c in labels], 0.4, label="classical baseline")
    ax.set_xticks(x, labels)
    ax.set(ylabel="F1", ylim=(0, 1), title="Per-class F1 on the test split")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def champion_section(this: dict, model: dict, gate: PromoteParams, summary: tuple[str, ...]) -> str:
    """This model against the registry's current champion, with the promotion gate's verdict."""
    when = registry.now()[:16].replace("T", " ") + " UTC"
    try:
        champion = registry.version_by_alias(registry.client(), this["name"], registry.CHAMPION)
    except PipelineError as exc:
        return f"Registry not available ({exc})."
    if champion is None:
        return (
            f"No `@champion` yet ({when}). `pipeline-promote` makes this model the first one if its test "
            f"{gate.metric} reaches the floor {gate.floor}."
        )
    if str(champion.version) == str(this["version"]):
        return f"This version is the current `@champion` ({when})."
    rows = [
        [f"champion v{champion.version}"] + [float(champion.tags.get(f"test_{k}", "nan")) for k in summary],
        [f"this model v{this['version']}"] + [model[k] for k in summary],
    ]
    text = [f"Current `@champion` as of {when}:", _table(["model", *summary], rows)]
    if champion.tags.get("test_data_sha256") != this.get("test_data_sha256"):
        text.append(
            "The champion was evaluated on another test set; `pipeline-promote` re-scores it on this one "
            "before deciding."
        )
    else:
        gain = model[gate.metric] - float(champion.tags[f"test_{gate.metric}"])
        verdict = (
            "would not be promoted"
            if gain < gate.min_improvement
            else f"would be promoted if the gain is significant at {gate.alpha} (a paired bootstrap on the same "
            "test examples; `pipeline-promote --dry-run` tests it)"
        )
        text.append(
            f"Same test set: {gate.metric} {gain:+.4f} against a required {gate.min_improvement:+.4f}; "
            f"this model {verdict}."
        )
    return "\n\n".join(text)


def _with_interval(metrics: dict, name: str) -> str:
    low, high = metrics["ci95"][name]
    return f"{metrics[name]:.4f} [{low:.3f}, {high:.3f}]"


def evaluation_sections(metrics: dict, errors: pd.DataFrame, errors_note: str, plots: Path, figures: Path) -> list[str]:
    """Curves and calibration, test metrics by text length, and the model's worst errors."""
    sections = []
    if "calibration" in metrics:
        calibration = metrics["calibration"]
        plot_curves(plots, figures / "curves.png")
        sections += [
            "### Curves and calibration",
            _table(
                [
                    "ROC AUC (macro)",
                    "ROC AUC (micro)",
                    "average precision (macro)",
                    "average precision (micro)",
                    "ECE uncalibrated",
                    "ECE",
                    "temperature",
                ],
                [
                    [
                        metrics.get("roc_auc_macro", "-"),
                        metrics["roc_auc_micro"],
                        metrics.get("average_precision_macro", "-"),
                        metrics["average_precision_micro"],
                        calibration["ece_uncalibrated"],
                        calibration["ece"],
                        calibration["temperature"],
                    ]
                ],
            ),
            "ECE: expected calibration error over 15 confidence bins; the temperature (fitted on the validation "
            "split, `finetune.temperature_scaling`) divides the logits before the served scores are computed.",
            "![ROC, precision-recall and reliability](figures/curves.png)",
        ]
    sliced = [("By text length", "length", metrics.get("slices", {}))]
    if "slices_by_column" in metrics:  # ingest.slice_column
        column = metrics["slices_by_column"]["column"]
        sliced.append((f"By {column}", column, metrics["slices_by_column"]["slices"]))
    for heading, key, slices in sliced:
        if slices:
            names = [k for k in next(iter(slices.values())) if k != "examples"]
            rows = [[k, v["examples"], *[v[n] for n in names]] for k, v in slices.items()]
            sections += [f"### {heading}", _table([key, "examples", *names], rows)]
    if len(errors):

        def short(text: str) -> str:
            return (text[:117] + "...") if len(text) > 120 else text

        sections += [
            "### Errors",
            errors_note,
            _table(
                ["kind", "class", "text", "gold", "predicted", "score"],
                [
                    [r.kind, r._2, short(str(r.text)).replace("|", "/"), r.gold, r.predicted, float(r.score)]
                    for r in errors.itertuples()
                ],
            ),
        ]
    return sections


def prompting_section(metrics: dict, model_card: ModelCard, averages: tuple[str, ...]) -> list[str]:
    """Decoder tasks: the fine-tuned model beside its base model prompted zero- and few-shot, with cost."""
    if "prompting" not in metrics:
        return []
    stats = model_card.training
    fine_tuned = [
        "fine-tuned",
        *[metrics[k] for k in averages],
        metrics.get("not_a_label_share", "-"),
        f"{stats.train_seconds:.0f} s training" if stats else "-",
        f"{metrics.get('generated_tokens_per_second', 0):.1f}",
        f"{stats.peak_rss_mib:.0f}" if stats else "-",
    ]
    rows = [
        [
            name,
            *[with_spread(row, k) for k in averages],
            row.get("not_a_label_share", "-"),
            f"{row['seconds']:.0f} s, prompts of {row['mean_prompt_tokens']:.0f} tokens",
            f"{row['generated_tokens_per_second']:.1f}",
            f"{row['peak_rss_mib']:.0f}",
        ]
        for name, row in metrics["prompting"].items()
    ]
    seeds = max((row.get("seeds", 1) for row in metrics["prompting"].values()), default=1)
    source = str(model_card.base_model)
    weights = " (its GGUF weights dequantised to fp32, as the pipeline loads them)" if source.endswith(".gguf") else ""
    return [
        "### Zero- and few-shot prompting of the base model",
        _table(
            ["model", *averages, "free generations not a label", "cost", "generated tokens/s", "peak RSS MiB"],
            [fine_tuned, *rows],
        ),
        f"The base model{weights}, on the same test split and prompt template; labels read by scoring the label "
        "words after the prompt, and a free greedy generation of each text checked for being a label word at all. "
        f"Few-shot demonstrations are drawn for each test text from the train split, balanced over labels, with "
        f"{seeds} seed(s) (`evaluate.prompting`): a few-shot value is the mean over the seeds ± their standard "
        "deviation. Calibrated rows divide the label words' probabilities by theirs after the same prompt with "
        "the content-free text 'N/A' (contextual calibration, Zhao et al. 2021). Peak RSS of prompting is the "
        "evaluate process's.",
    ]


def with_spread(row: dict, metric: str) -> str:
    """A prompting row's metric, with its standard deviation over seeds where there were several."""
    value = row[metric]
    if row.get("seeds", 1) > 1 and f"{metric}_sd" in row:
        return f"{value:.4f} ± {row[metric + '_sd']:.4f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def runtime_section(compared: dict) -> list[str]:
    """PyTorch and the ONNX Runtime graphs side by side (evaluate measured them in one run)."""
    metric, machine = compared["metric"], compared["machine"]
    rows = [
        [
            name + (" (served)" if name == compared["served"] else ""),
            row[metric],
            f"{row['difference']:+.4f}",
            f"{row['samples_per_second']:.0f}",
            f"{row['speedup']:.2f}x",
            f"{row['latency_p50_ms']:.2f}",
            f"{row['latency_p95_ms']:.2f}",
            f"{row['megabytes']:.1f}",
        ]
        for name, row in compared["runtimes"].items()
    ]
    return [
        "### Runtimes",
        _table(
            [
                "runtime",
                f"test {metric}",
                "difference",
                "samples/s (batch 32)",
                "vs PyTorch",
                "p50 ms (1 text)",
                "p95 ms",
                "weights MB",
            ],
            rows,
        ),
        f"Measured by evaluate in one run on the test split: {machine['cpu']}, {machine['cores']} cores "
        f"({', '.join(machine['isa']) or 'no AVX2'}), load average {machine['load_average_1m']}, "
        f"{', '.join(f'{k} {v}' for k, v in machine['versions'].items())}, {machine['date']}. int8: dynamic "
        "quantisation of the weights (onnxruntime); `export.serve` picks the served runtime.",
    ]


def plot_curves(plots: Path, target: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for kind, ax, (x, y), title in (
        ("roc", axes[0], ("fpr", "tpr"), "ROC"),
        ("pr", axes[1], ("recall", "precision"), "Precision-recall"),
        ("calibration", axes[2], ("confidence", "accuracy"), "Reliability"),
    ):
        for file in sorted((plots / kind).glob("*.csv")):
            curve = pd.read_csv(file)
            ax.plot(curve[x], curve[y], marker="o" if kind == "calibration" else None, label=file.stem)
        if kind != "pr":
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def unreadable_line(token_stats: dict) -> str:
    """What of each split the model cannot read (tokenize's stats): its unknown-token share, and the inputs
    left with no token."""
    if not all("unknown_token_share" in token_stats.get(name, {}) for name in paths.SPLITS):
        return ""  # tokenized before these were counted
    shares = ", ".join(f"{name} {token_stats[name]['unknown_token_share']:.2%}" for name in paths.SPLITS)
    empty = sum(token_stats[name]["inputs_without_tokens"] for name in paths.SPLITS)
    return (
        f"Tokens the model cannot read (its unknown token): {shares}; inputs with no token: {empty} "
        "(tokenize stops above `tokenize.max_unknown_share`)."
    )


def render(
    title: str,
    card: dict,
    split_card: dict,
    token_stats: dict,
    model_card: ModelCard,
    model: dict,
    baseline: dict,
    registered: dict,
    champion: str,
    classes: list[str],
    averages: tuple[str, ...],
    baseline_name: str,
    example_unit: str,
    evaluation: list[str],
) -> str:
    stats = model_card.training
    assert stats is not None, "the finetune stage always records training stats"
    dropped = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in card["dropped"].items()) or "none"
    overlap = split_card.get("overlap")
    versus = model["vs_baseline"]
    verdict = (
        f"**Verdict:** {versus['verdict']} (95 % interval of the difference, paired bootstrap over the test examples)."
    )
    flags = "".join(f"\n- Warning: {flag}." for flag in model.get("flags", []))
    per_class = (  # classes, or entity types; free text has none
        [
            "### Per class",
            _table(
                ["class", "precision", "recall", "F1", "F1 (baseline)", "support"],
                [
                    [
                        c,
                        model["per_class"][c]["precision"],
                        model["per_class"][c]["recall"],
                        model["per_class"][c]["f1"],
                        baseline["per_class"][c]["f1"],
                        model["per_class"][c]["support"],
                    ]
                    for c in classes
                ],
            ),
            "![per-class F1](figures/per_class_f1.png)",
            "![confusion matrix](figures/confusion_matrix.png)",
        ]
        if classes
        else []
    )
    sections = [
        f"# {title}",
        verdict + flags,
        f"Model `{registered['name']}` version {registered['version']} (alias `@{registered['alias']}`), "
        f"MLflow run `{model_card.provenance.mlflow_run_id}`, data sha256 `{model_card.provenance.data_sha256[:12]}`."
        if model_card.provenance
        else "",
        "## Data",
        f"Source: `{card['source']}`  \nRows read: {card['rows_read']}; kept: {card['rows']}; dropped: {dropped}"
        + "".join(
            f"; repaired ({reason.replace('_', ' ')}): {count}" for reason, count in card.get("repaired", {}).items()
        )
        + ".",
        _table(
            ["split", "examples", *classes],
            [
                [name, split_card[name]["rows"]] + [split_card[name]["labels"].get(c, 0) for c in classes]
                for name in paths.SPLITS
            ],
        ),
        f"Texts in two splits (kept, `split.overlap: warn`): {overlap}." if overlap else "No text is in two splits.",
        f"Text length (words): mean {card['text_words']['mean']}, median {card['text_words']['median']}, "
        f"95th percentile {card['text_words']['p95']}, max {card['text_words']['max']}.",
        unreadable_line(token_stats),
        "## Test metrics",
        f"Each value with its 95 % bootstrap interval over the test examples ({example_unit} resampled).",
        _table(
            ["model", *averages],
            [
                ["fine-tuned"] + [_with_interval(model, k) for k in averages],
                [baseline_name] + [_with_interval(baseline, k) for k in averages],
                ["gain"] + [f"{model[k] - baseline[k]:+.4f}" for k in averages],
            ],
        ),
        "### Against the champion",
        champion,
        *per_class,
        *evaluation,
        "## Training",
        f"{stats.global_step} optimizer steps in {stats.train_seconds} s "
        f"({stats.train_samples_per_second} samples/s); best validation {stats.best_metric_name} "
        f"{stats.best_metric:.4f} at step {stats.best_checkpoint_step}.",
        "![learning curves](figures/learning_curves.png)",
        "Benchmarks of the methods, of long texts and of time to accuracy are in docs/benchmarks.md, generated "
        "from reports/benchmarks by `python -m benchmarks.docs_page`.",
    ]
    return "\n\n".join(sections) + "\n"


@stage_main
def main() -> None:
    params = load_params()
    card = data.read_json(paths.INGESTED / "card.json")
    split_card = data.read_json(paths.SPLIT / "card.json")
    model_card = ModelCard.read(paths.MODEL)
    model = data.read_json(paths.EVAL / "metrics.json")
    registered = data.read_json(paths.EVAL / "registry.json")
    task = TASKS.for_task(model_card.task)
    classes = list(model.get("per_class", {}))  # labels, or entity types for token tasks; none for free text
    baseline = data.read_json(paths.EVAL / "baseline.json")
    stopping_metric = model_card.training.best_metric_name if model_card.training else "loss"
    with atomic_dir(paths.FIGURES) as figures, atomic_file(paths.REPORT) as report:
        plot_learning_curves(paths.TRAIN_LOGS, stopping_metric, figures / "learning_curves.png")
        if classes:
            confusion = pd.read_csv(paths.EVAL / "confusion.csv")
            axis = task.confusion_axis(classes)
            matrix = confusion_matrix(confusion["actual"], confusion["predicted"], labels=axis)
            plot_confusion(matrix.tolist(), axis, "Fine-tuned model, test split", figures / "confusion_matrix.png")
            plot_per_class(model, baseline, classes, figures / "per_class_f1.png")
        champion = champion_section(registered, model, params.promote, task.summary_metrics)
        report.write_text(
            render(
                params.report.title,
                card,
                split_card,
                data.read_json(paths.TOKENIZED / "stats.json"),
                model_card,
                model,
                baseline,
                registered,
                champion,
                classes,
                task.summary_metrics,
                task.baseline_name,
                task.example_unit,
                evaluation_sections(
                    model,
                    # Text as written: an empty class (free text) or a generated "None" is no missing value.
                    pd.read_csv(paths.EVAL / "errors.csv", keep_default_na=False),
                    task.error_examples_note,
                    paths.EVAL / "plots",
                    figures,
                )
                + prompting_section(model, model_card, task.summary_metrics)
                + runtime_section(data.read_json(paths.EVAL / "runtimes.json")),
            ),
            encoding="utf-8",
        )
    headline = task.headline_metric
    print(f"report: {paths.REPORT} (fine-tuned {headline} {model[headline]:.4f} vs baseline {baseline[headline]:.4f})")


if __name__ == "__main__":
    main()
