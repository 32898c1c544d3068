"""Test numbers with their uncertainty: bootstrap intervals over test examples, and the paired bootstrap
that decides whether one model is better than another on the same examples."""

from __future__ import annotations

import random

import pytest

from pipeline.evaluation.statistics import bootstrap_intervals, paired_bootstrap, under_predicted
from pipeline.tasks.scoring import SCORINGS

TASK = SCORINGS.for_task("single_label_classification")
LABELS = ["negative", "positive"]


def scores(true: list, pred: list) -> dict[str, float]:
    return TASK.summary_scores(true, pred, LABELS)


def fixture(n: int, correct: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n examples of which the first `correct` are predicted right, in a shuffled order of labels."""
    rng = random.Random(seed)
    true = [rng.choice(LABELS) for _ in range(n)]
    flip = {"negative": "positive", "positive": "negative"}
    return true, [t if i < correct else flip[t] for i, t in enumerate(true)]


def test_identical_models_are_indistinguishable() -> None:
    true, pred = fixture(1000, 850)
    result = paired_bootstrap(scores, true, pred, pred, "accuracy", rounds=500, seed=0)
    assert (result.difference, result.p_value, result.interval) == (0.0, 1.0, (0.0, 0.0))
    assert not result.significant(0.05)


def test_a_clearly_better_model_is_significant() -> None:
    true, better = fixture(1000, 900)
    _, worse = fixture(1000, 800)
    result = paired_bootstrap(scores, true, better, worse, "accuracy", rounds=500, seed=0)
    assert result.difference == pytest.approx(0.1) and result.significant(0.05)
    assert result.p_value == pytest.approx(1 / 501) and 0.07 < result.interval[0] < 0.1 < result.interval[1] < 0.13


def test_a_two_example_improvement_on_a_thousand_examples_is_not_significant() -> None:
    true, better = fixture(1000, 852)
    _, worse = fixture(1000, 850)
    result = paired_bootstrap(scores, true, better, worse, "accuracy", rounds=1000, seed=0)
    assert result.difference == pytest.approx(0.002)
    assert not result.significant(0.05) and result.p_value > 0.1  # both extra texts are missed in ~e^-2 of resamples


def test_intervals_hold_the_point_estimate_and_shrink_with_more_examples() -> None:
    small = bootstrap_intervals(scores, *fixture(100, 85), ["accuracy"], rounds=500, seed=0)["accuracy"]
    large = bootstrap_intervals(scores, *fixture(2000, 1700), ["accuracy"], rounds=500, seed=0)["accuracy"]
    assert small[0] < 0.85 < small[1] and large[0] < 0.85 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3  # about sqrt(20) narrower
    again = bootstrap_intervals(scores, *fixture(100, 85), ["accuracy"], rounds=500, seed=0)["accuracy"]
    assert again == small  # seeded


def test_token_tasks_resample_sentences_not_tokens() -> None:
    ner = SCORINGS.for_task("token_classification")
    true = [["B-PER", "O", "B-LOC"], ["O", "O"], ["B-ORG", "I-ORG"]] * 20
    pred = [["B-PER", "O", "O"], ["O", "O"], ["B-ORG", "I-ORG"]] * 20
    labels = ["O", "B-LOC", "B-ORG", "B-PER", "I-ORG"]
    seen: list[int] = []

    def sentence_scores(t: list, p: list) -> dict[str, float]:
        seen.append(len(t))
        return ner.summary_scores(t, p, labels)

    bootstrap_intervals(sentence_scores, true, pred, ["f1"], rounds=100, seed=0)
    assert set(seen) == {60}  # each resample draws 60 sentences


def test_classes_never_or_rarely_predicted_are_flagged() -> None:
    import pandas as pd

    pairs = pd.DataFrame({"actual": ["a"] * 50 + ["b"] * 40 + ["c"] * 10, "predicted": ["a"] * 85 + ["b"] * 15})
    assert under_predicted(pairs, ["a", "b", "c"]) == [
        "class 'b' is predicted 15 times for 40 in the test split",
        "class 'c' is never predicted (10 in the test split)",
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_summary_scores_agree_with_sklearn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(seed)
    labels = ["a", "b", "c", "d"]  # "d" never occurs: its F1 of 0 counts in the macro average, as in sklearn
    true = [rng.choice(labels[:3]) for _ in range(300)]
    pred = [rng.choice(labels[:3]) if rng.random() < 0.5 else t for t in true]
    ours = TASK.summary_scores(true, pred, labels)
    assert ours["accuracy"] == pytest.approx(accuracy_score(true, pred))
    for average in ("macro", "micro", "weighted"):
        expected = f1_score(true, pred, labels=labels, average=average, zero_division=0)
        assert ours[f"{average}_f1"] == pytest.approx(expected), average


def test_temperature_scaling_undoes_overconfidence_and_lowers_the_calibration_error() -> None:
    import numpy as np

    from pipeline.evaluation.statistics import reliability
    from pipeline.training.calibration import fit_temperature, softmax

    rng = np.random.default_rng(0)
    calibrated = rng.normal(size=(4000, 3))  # labels drawn from softmax(calibrated): calibrated by construction
    labels = np.array([rng.choice(3, p=p) for p in softmax(calibrated)])
    overconfident = calibrated * 4
    temperature = fit_temperature(overconfident, labels, multi_label=False)
    assert 3.4 < temperature < 4.6
    task = SCORINGS.for_task("single_label_classification")
    before, _ = reliability(*task.reliability_points(softmax(overconfident), labels))
    after, diagram = reliability(*task.reliability_points(softmax(overconfident / temperature), labels))
    assert after < before / 3 and after < 0.03
    assert diagram["count"].sum() == 4000 and (diagram["confidence"].diff().dropna() > 0).all()


def test_ner_errors_are_the_most_frequent_type_confusions_with_their_sentences() -> None:
    from pipeline.tasks.base import Outcomes

    ner = SCORINGS.for_task("token_classification")
    sentences = {
        "Anna met Bob in Paris": (["B-PER", "O", "B-PER", "O", "B-LOC"], ["B-PER", "O", "B-LOC", "O", "B-LOC"]),
        "Bob left Rome": (["B-PER", "O", "B-LOC"], ["B-LOC", "O", "B-LOC"]),
        "Carl saw Oslo": (["B-PER", "O", "B-LOC"], ["B-LOC", "O", "O"]),
        "they went to New York": (["O"] * 3 + ["B-LOC", "I-LOC"], ["O"] * 3 + ["B-LOC", "O"]),
        "Dana is right": (["B-PER", "O", "O"], ["B-PER", "O", "O"]),
    }
    texts = list(sentences)
    result = Outcomes([t for t, _ in sentences.values()], [p for _, p in sentences.values()])
    errors = ner.error_examples(texts, result, None, ["O", "B-LOC", "B-PER", "I-LOC"], k=1)
    # PER read as LOC three times (the most frequent), then LOC missed twice (k=1: the top two kept).
    assert errors[["gold", "predicted", "score"]].drop_duplicates().values.tolist() == [
        ["PER", "LOC", 3.0],
        ["LOC", "O", 2.0],
    ]
    per_as_loc = errors[(errors["gold"] == "PER")]["text"].tolist()
    assert per_as_loc == ["Anna met [[ Bob ]] in Paris", "[[ Bob ]] left Rome"]  # two examples, the span marked
    assert errors[errors["gold"] == "LOC"]["text"].tolist() == ["Carl saw [[ Oslo ]]", "they went to [[ New York ]]"]
    assert set(errors["kind"]) == {"confusion"} and (errors["class"] == errors["gold"]).all()
