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
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MultiLabelBinarizer

from stages import data, paths, registry
from stages.errors import PipelineError, atomic_dir, atomic_file, stage_main
from stages.params import BaselineParams, PromoteParams, load_params
from stages.tasks import get_task


def train_baseline(train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams, task_name: str) -> dict[str, Any]:
    """A classical model fitted on the train split and scored on the test split: TF-IDF + logistic
    regression for texts (one-vs-rest for label sets); for tags, logistic regression on each word's
    features and its neighbours'."""
    task = get_task(task_name)
    if task.name == "token_classification":
        pipeline = make_pipeline(DictVectorizer(), LogisticRegression(C=params.C, max_iter=300))
        pipeline.fit([f for s in train[data.TOKENS] for f in word_features(list(s))], [t for s in train[data.TAGS] for t in s])
        flat = pipeline.predict([f for s in test[data.TOKENS] for f in word_features(list(s))]).tolist()
        predicted = _unflatten(flat, test[data.TOKENS].map(len).tolist())
        return task.test_metrics([list(t) for t in test[data.TAGS]], predicted, labels)
    tfidf = TfidfVectorizer(ngram_range=(1, params.ngram_max), max_features=params.max_features, sublinear_tf=True)
    if task.name == "multi_label_classification":
        binarizer = MultiLabelBinarizer(classes=labels).fit([labels])
        pipeline = make_pipeline(tfidf, OneVsRestClassifier(LogisticRegression(C=params.C, max_iter=2000)))
        pipeline.fit(data.raw_texts(train), binarizer.transform(train[data.LABEL].map(list)))
        predicted = [list(row) for row in binarizer.inverse_transform(pipeline.predict(data.raw_texts(test)))]
        return task.test_metrics(test[data.LABEL].map(list).tolist(), predicted, labels)
    pipeline = make_pipeline(tfidf, LogisticRegression(C=params.C, max_iter=2000))
    pipeline.fit(data.raw_texts(train), train[data.LABEL].astype(str))  # a pair: both texts in one bag of words
    return task.test_metrics(test[data.LABEL].astype(str).tolist(), pipeline.predict(data.raw_texts(test)).tolist(), labels)


def word_features(words: list[str]) -> list[dict[str, Any]]:
    """Per-word features of the classical NER baseline: the word, its shape and affixes, its neighbours."""
    def shape(word: str) -> dict[str, Any]:
        return {"lower": word.lower(), "title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(),
                "suffix3": word[-3:].lower(), "prefix3": word[:3].lower()}

    features = []
    for i, word in enumerate(words):
        feature = shape(word)
        feature["prev"] = words[i - 1].lower() if i else "<s>"
        feature["next"] = words[i + 1].lower() if i + 1 < len(words) else "</s>"
        feature["prev_title"] = words[i - 1].istitle() if i else False
        features.append(feature)
    return features


def _unflatten(flat: list[str], lengths: list[int]) -> list[list[str]]:
    out, start = [], 0
    for length in lengths:
        out.append(flat[start : start + length])
        start += length
    return out


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
    ax.bar(x - 0.2, [model["per_class"][l]["f1"] for l in labels], 0.4, label="fine-tuned")
    ax.bar(x + 0.2, [baseline["per_class"][l]["f1"] for l in labels], 0.4, label="classical baseline")
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
        return (f"No `@champion` yet ({when}). `python -m stages.promote` makes this model the first one if its test "
                f"{gate.metric} reaches the floor {gate.floor}.")
    if str(champion.version) == str(this["version"]):
        return f"This version is the current `@champion` ({when})."
    rows = [[f"champion v{champion.version}"] + [float(champion.tags.get(f"test_{k}", "nan")) for k in summary],
            [f"this model v{this['version']}"] + [model[k] for k in summary]]
    text = [f"Current `@champion` as of {when}:", _table(["model", *summary], rows)]
    if champion.tags.get("test_data_sha256") != this.get("test_data_sha256"):
        text.append("The champion was evaluated on another test set; `python -m stages.promote` re-scores it on this one before deciding.")
    else:
        gain = model[gate.metric] - float(champion.tags[f"test_{gate.metric}"])
        verdict = "would be promoted" if gain >= gate.min_improvement else "would not be promoted"
        text.append(f"Same test set: {gate.metric} {gain:+.4f} against a required {gate.min_improvement:+.4f}; "
                    f"this model {verdict} by `python -m stages.promote`.")
    return "\n\n".join(text)


def benchmark_sections(folder: Path, figures: Path) -> list[str]:
    """The method comparison, pretrained vs scratch, and label efficiency measured by
    benchmarks/compare_methods.py, and truncation of long documents by benchmarks/long_texts.py (each part
    shown when its results file exists)."""
    parts = {name: data.read_json(folder / f"{name}.json") for name in ("methods", "scratch", "label_efficiency", "long_texts")
             if (folder / f"{name}.json").is_file()}
    if not parts:
        return []

    def provenance(result: dict) -> str:
        return f"`{result['command']}`, {result['cpus']} CPU cores, {result['date']}, {result['wall_seconds']} s in all."

    sections = ["## Benchmarks",
                "Default data and model, test split; each run of the method, pretraining and label-efficiency tables trains "
                "with the default `finetune` budget (benchmarks/methods.yaml lists the per-method changes)."]
    if "methods" in parts:
        rows = parts["methods"]["rows"]
        sections += ["### Fine-tuning methods", provenance(parts["methods"]), _table(
            ["method", "test accuracy", "macro-F1", "trainable params", "trainable %", "train s", "peak RSS MiB", "saved MB",
             "trained MB", "load avg"],
            [[r["name"], r["test_accuracy"], r["test_macro_f1"], f"{r['trainable_params']:,}",
              f"{100 * r['trainable_params'] / r['total_params']:.2f}", f"{r['train_seconds']:.0f}", f"{r['peak_rss_mib']:.0f}",
              f"{r['artifact_mb']:.2f}", f"{r['trained_mb']:.2f}", _load(r)] for r in rows]),
            "*trained MB*: what a run adds beside the pretrained weights (the adapter and head for peft methods). "
            "*load avg*: the machine's 1-minute load when the run ended; about 2 means it ran alone on the 2 cores."]
    if "scratch" in parts:
        full = [r for r in parts.get("methods", {}).get("rows", []) if r["name"] == "full"]
        rows = full + parts["scratch"]["rows"]
        sections += ["### Pretrained vs randomly initialised (same architecture, data and budget)", provenance(parts["scratch"]),
                     _table(["model", "test accuracy", "macro-F1", "train s", "load avg"],
                            [["pretrained" if r["name"] == "full" else "random init", r["test_accuracy"], r["test_macro_f1"],
                              f"{r['train_seconds']:.0f}", _load(r)] for r in rows])]
    if "label_efficiency" in parts:
        rows = parts["label_efficiency"]["rows"]
        plot_label_efficiency(rows, figures / "label_efficiency.png")
        sections += ["### Label efficiency", provenance(parts["label_efficiency"]), _table(
            ["train labels", "fine-tuned accuracy", "TF-IDF accuracy", "fine-tuned macro-F1", "TF-IDF macro-F1", "train s", "load avg"],
            [[f"{r['train_examples']:,}", r["test_accuracy"], r["baseline_accuracy"], r["test_macro_f1"], r["baseline_macro_f1"],
              f"{r['train_seconds']:.0f}", _load(r)] for r in rows]), "![label efficiency](figures/label_efficiency.png)"]
    if "long_texts" in parts:
        setup = parts["long_texts"]["setup"]
        sections += ["### Long documents: truncation", provenance(parts["long_texts"]),
                     f"{setup['train_documents']:,} training and {setup['test_documents']:,} test documents of "
                     f"{setup['snippets_per_document']} real snippets (about {setup['mean_test_tokens']} tokens), one decisive "
                     f"snippet among weak ones; windows of {setup['window_tokens']} tokens; every variant trains "
                     f"{setup['steps']} steps of {setup['batch_size']}. The decisive snippet starts inside the first window "
                     f"in {setup['share_evidence_in_first_window']:.0%} of test documents.",
                     _table(["truncation", "pooling", "training inputs", "epochs", "train s", "test accuracy (95 % CI)",
                             "evidence in first window", "evidence beyond it", "load avg"],
                            [[r["truncation"], r["pooling"], f"{r['training_inputs']:,}", f"{r['epochs']:.1f}", f"{r['train_seconds']:.0f}",
                              f"{r['accuracy']:.4f} ± {r['accuracy_ci95']:.3f}", r["accuracy_evidence_in_first_window"],
                              r["accuracy_evidence_beyond"], _load(r)] for r in parts["long_texts"]["rows"]])]
    return sections


def _load(row: dict) -> str:
    return f"{row['load_average_1m']:.2f}" if "load_average_1m" in row else ""


def plot_label_efficiency(rows: list[dict], target: Path) -> None:
    sizes = [r["train_examples"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r["test_accuracy"] for r in rows], marker="o", label="fine-tuned")
    ax.plot(sizes, [r["baseline_accuracy"] for r in rows], marker="s", label="TF-IDF + logistic regression")
    ax.set_xscale("log")
    ax.set(xlabel="training labels", ylabel="test accuracy", title="Label efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(title: str, card: dict, split_card: dict, training: dict, model: dict, baseline: dict,
           registered: dict, champion: str, classes: list[str], metric: str, averages: tuple[str, ...],
           baseline_name: str, benchmarks: list[str]) -> str:
    dropped = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in card["dropped"].items()) or "none"
    overlap = split_card.get("overlap")
    sections = [
        f"# {title}",
        f"Model `{registered['name']}` version {registered['version']} (alias `@{registered['alias']}`), "
        f"MLflow run `{training['mlflow_run_id']}`, data sha256 `{training['data_sha256'][:12]}`.",
        "## Data",
        f"Source: `{card['source']}`  \nRows read: {card['rows_read']}; kept: {card['rows']}; dropped: {dropped}"
        + "".join(f"; repaired ({reason.replace('_', ' ')}): {count}" for reason, count in card.get("repaired", {}).items()) + ".",
        _table(["split", "examples", *classes], [[name, split_card[name]["rows"]] + [split_card[name]["labels"].get(c, 0) for c in classes]
                                                for name in paths.SPLITS]),
        f"Texts in two splits (kept, `split.overlap: warn`): {overlap}." if overlap else "No text is in two splits.",
        f"Text length (words): mean {card['text_words']['mean']}, median {card['text_words']['median']}, "
        f"95th percentile {card['text_words']['p95']}, max {card['text_words']['max']}.",
        "## Test metrics",
        _table(["model", *averages], [
            ["fine-tuned"] + [model[k] for k in averages],
            [baseline_name] + [baseline[k] for k in averages],
            ["gain"] + [f"{model[k] - baseline[k]:+.4f}" for k in averages],
        ]),
        "### Against the champion",
        champion,
        "### Per class",
        _table(["class", "precision", "recall", "F1", "F1 (baseline)", "support"], [
            [l, model["per_class"][l]["precision"], model["per_class"][l]["recall"], model["per_class"][l]["f1"],
             baseline["per_class"][l]["f1"], model["per_class"][l]["support"]] for l in classes
        ]),
        "![per-class F1](figures/per_class_f1.png)",
        "![confusion matrix](figures/confusion_matrix.png)",
        "## Training",
        f"{training['global_step']} optimizer steps in {training['train_seconds']} s "
        f"({training['train_samples_per_second']} samples/s); best validation {metric} "
        f"{training[f'best_validation_{metric}']:.4f} at step {training['best_checkpoint_step']}.",
        "![learning curves](figures/learning_curves.png)",
        *benchmarks,
    ]
    return "\n\n".join(sections) + "\n"


@stage_main
def main() -> None:
    params = load_params()
    card = data.read_json(paths.INGESTED / "card.json")
    split_card = data.read_json(paths.SPLIT / "card.json")
    training = data.read_json(paths.MODEL / "training.json")
    model = data.read_json(paths.EVAL / "metrics.json")
    registered = data.read_json(paths.EVAL / "registry.json")
    labels = training["labels"]
    task = get_task(params.task)
    classes = list(model["per_class"])  # labels, or entity types for token tasks
    baseline = train_baseline(data.read_table(paths.SPLIT / "train.parquet"), data.read_table(paths.SPLIT / "test.parquet"),
                              labels, params.report.baseline, params.task)
    metric = params.finetune.metric_for_best_model
    with atomic_dir(paths.FIGURES) as figures, atomic_file(paths.REPORT) as report, atomic_file(paths.BASELINE_METRICS) as base:
        plot_learning_curves(paths.TRAIN_LOGS, metric, figures / "learning_curves.png")
        confusion = pd.read_csv(paths.EVAL / "confusion.csv")
        # Token tasks pair entity types, with "O" for a span only one side found; label sets pair each
        # label with "none" when only one side has it.
        axis = classes + {"token_classification": ["O"], "multi_label_classification": ["none"]}.get(task.name, [])
        matrix = confusion_matrix(confusion["actual"], confusion["predicted"], labels=axis)
        plot_confusion(matrix.tolist(), axis, "Fine-tuned model, test split", figures / "confusion_matrix.png")
        plot_per_class(model, baseline, classes, figures / "per_class_f1.png")
        champion = champion_section(registered, model, params.promote, task.summary_metrics)
        baseline_name = ("TF-IDF + logistic regression" if task.name != "token_classification"
                         else "word-feature logistic regression")
        report.write_text(render(params.report.title, card, split_card, training, model, baseline, registered, champion,
                                 classes, metric, task.summary_metrics, baseline_name,
                                 benchmark_sections(paths.BENCHMARKS, figures)), encoding="utf-8")
        data.write_json({k: v for k, v in baseline.items() if k != "confusion_matrix"}, base)
    headline = task.headline_metric
    print(f"report: {paths.REPORT} (fine-tuned {headline} {model[headline]:.4f} vs baseline {baseline[headline]:.4f})")


if __name__ == "__main__":
    main()
