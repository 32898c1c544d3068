"""How sure a test number is: bootstrap confidence intervals over test examples, and the paired bootstrap
that compares two models on the same examples (the promotion gate, the report's verdict).

The unit resampled is the task's example (a text, a text pair, a sentence for NER: `Task.outcomes`), so
token tasks resample sentences, never tokens. scikit-learn has no bootstrap for arbitrary metrics, and
scipy.stats.bootstrap wants a vectorised statistic (the tasks' metrics are sklearn/seqeval calls on lists),
hence this small loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

OUTCOMES_ARTIFACT = "evaluation/outcomes.json"  # in the evaluate run: labels, true and predicted per example
Scores = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]  # (true, pred) of some examples -> metrics


def _pick(items: Sequence[Any], index: np.ndarray) -> list[Any]:
    return [items[i] for i in index]


def bootstrap_intervals(
    scores: Scores,
    true: Sequence[Any],
    pred: Sequence[Any],
    names: Sequence[str],
    rounds: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile intervals of each metric in `names` over `rounds` resamples of the examples."""
    rng = np.random.default_rng(seed)
    n = len(true)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        index = rng.integers(0, n, n)
        values = scores(_pick(true, index), _pick(pred, index))
        for name in names:
            draws[name].append(values[name])
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for name, v in draws.items()}


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same test examples, for one metric."""

    metric: str
    a: float
    b: float
    difference: float  # a - b on the whole test set
    interval: tuple[float, float]  # 95 % percentile interval of the difference over resamples
    p_value: float  # one-sided: how often a resample shows no gain of A over B

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha

    def describe(self) -> str:
        return (
            f"{self.metric} {self.a:.4f} vs {self.b:.4f}: {self.difference:+.4f} "
            f"(95% CI {self.interval[0]:+.4f} to {self.interval[1]:+.4f}, p = {self.p_value:.3f})"
        )


def paired_bootstrap(
    scores: Scores,
    true: Sequence[Any],
    pred_a: Sequence[Any],
    pred_b: Sequence[Any],
    metric: str,
    rounds: int,
    seed: int,
) -> PairedComparison:
    """Koehn (2004)'s paired bootstrap: resample the examples, score both models on each resample; the
    p-value is the share of resamples (plus one, so it is never 0) where A does not beat B."""
    if not (len(true) == len(pred_a) == len(pred_b)):
        raise ValueError("both models must be scored on the same examples")
    rng = np.random.default_rng(seed)
    n = len(true)
    a, b = scores(true, pred_a)[metric], scores(true, pred_b)[metric]
    differences = np.empty(rounds)
    for round_ in range(rounds):
        index = rng.integers(0, n, n)
        sample = _pick(true, index)
        differences[round_] = (
            scores(sample, _pick(pred_a, index))[metric] - scores(sample, _pick(pred_b, index))[metric]
        )
    p_value = (1 + int((differences <= 0).sum())) / (1 + rounds)
    interval = (float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5)))
    return PairedComparison(metric, float(a), float(b), float(a - b), interval, float(p_value))


def under_predicted(pairs: Any, classes: Sequence[str], share: float = 0.5) -> list[str]:
    """Classes the model never predicts, or predicts less than `share` of their support, read off the
    (actual, predicted) confusion pairs: a model can beat a baseline on accuracy while ignoring a rare class."""
    actual = pairs["actual"].value_counts()
    predicted = pairs["predicted"].value_counts()
    flags = []
    for name in classes:
        support, found = int(actual.get(name, 0)), int(predicted.get(name, 0))
        if support and not found:
            flags.append(f"class '{name}' is never predicted ({support} in the test split)")
        elif support and found < share * support:
            flags.append(f"class '{name}' is predicted {found} times for {support} in the test split")
    return flags


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, pd.DataFrame]:
    """Expected calibration error over equal-width confidence bins, and the reliability diagram's rows
    (mean confidence, accuracy and count of each non-empty bin). sklearn's calibration_curve gives the
    curve but not the bin counts ECE weighs by, hence this."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    table = pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "count"])
    ece = float((table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / max(len(confidence), 1))
    return ece, table


def curves(
    indicator: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, float]]:
    """ROC and precision-recall curves of each class (one-vs-rest) and of all decisions pooled ("micro"),
    with ROC AUC and average precision per class and micro/macro averaged (sklearn)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    roc, pr, summary = {}, {}, {}
    present = [j for j in range(len(classes)) if 0 < indicator[:, j].sum() < len(indicator)]
    for j in present:
        fpr, tpr, _ = roc_curve(indicator[:, j], probabilities[:, j])
        precision, recall, _ = precision_recall_curve(indicator[:, j], probabilities[:, j])
        roc[classes[j]] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
        pr[classes[j]] = pd.DataFrame({"recall": recall, "precision": precision})
    fpr, tpr, _ = roc_curve(indicator.ravel(), probabilities.ravel())
    precision, recall, _ = precision_recall_curve(indicator.ravel(), probabilities.ravel())
    roc["micro"], pr["micro"] = (
        pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        pd.DataFrame({"recall": recall, "precision": precision}),
    )
    if present:
        summary["roc_auc_macro"] = float(
            roc_auc_score(indicator[:, present], probabilities[:, present], average="macro")
        )
        summary["average_precision_macro"] = float(
            average_precision_score(indicator[:, present], probabilities[:, present], average="macro")
        )
    summary["roc_auc_micro"] = float(roc_auc_score(indicator.ravel(), probabilities.ravel()))
    summary["average_precision_micro"] = float(average_precision_score(indicator.ravel(), probabilities.ravel()))
    return roc, pr, summary
