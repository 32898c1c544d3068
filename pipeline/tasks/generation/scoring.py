"""Scoring for decoder tasks: single-label metrics, or ROUGE-L, chrF, BLEU and exact match of free text; the
classical baselines; and the untuned model prompted zero- and few-shot, the baselines a fine-tuned decoder
must beat."""

from __future__ import annotations

import functools
import random
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.tasks.base import Outcomes, Scoring
from pipeline.tasks.classification.scoring import SingleLabelScoring
from pipeline.tasks.generation.encoding import chat_histories
from pipeline.tasks.generation.generating import generate, next_token_scores
from pipeline.tasks.generation.prediction import GenerativeClassificationPrediction
from pipeline.tasks.generation.prompting import Demonstration, first_tokens, label_words, prompt_ids
from pipeline.tasks.generation.spec import RESPONSE_STATS, TextGenerationSpec

if TYPE_CHECKING:
    from pipeline.card import ModelCard
    from pipeline.schema import BaselineParams, PromptingParams


def base_model(pretrained: Callable[[], Path]) -> tuple[Any, Any]:
    """The untuned pretrained model and its tokenizer, for prompting baselines."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = pretrained()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, use_safetensors=True)
    return model.eval(), tokenizer


def demonstrations_for(
    texts: Sequence[str], pool_texts: Sequence[str], pool_answers: Sequence[str], k: int, seed: int
) -> list[list[Demonstration]]:
    """k demonstrations for each text, drawn once with `seed` from the pool (the train split), balanced
    over answers (round robin over the answers, so no answer dominates the context), in an order shuffled
    for each text (small models tend to repeat the last answer shown, Zhao et al. 2021, "Calibrate before
    use"; a fixed order would turn that into one answer for every text); a demonstration whose text is
    the text being asked is replaced by the next unused one of its answer, so no text sees itself solved."""
    if k == 0:
        return [[] for _ in texts]
    rng = random.Random(seed)
    by_answer: dict[str, list[int]] = {}
    for index, answer in enumerate(pool_answers):
        by_answer.setdefault(answer, []).append(index)
    for indices in by_answer.values():
        rng.shuffle(indices)
    answers = sorted(by_answer)
    rng.shuffle(answers)
    if k + 1 > len(pool_texts):
        raise PipelineError(f"evaluate.prompting.shots: {k} demonstrations need more than {len(pool_texts)} examples")
    chosen = [answers[i % len(answers)] for i in range(k)]
    out = []
    for text in texts:
        shown, used = [], dict.fromkeys(answers, 0)
        for answer in chosen:
            candidates = by_answer[answer]
            while used[answer] < len(candidates) and pool_texts[candidates[used[answer]]] == text:
                used[answer] += 1
            if used[answer] >= len(candidates):
                continue  # every example of this answer is the text itself: show one fewer
            shown.append(Demonstration(pool_texts[candidates[used[answer]]], pool_answers[candidates[used[answer]]]))
            used[answer] += 1
        rng.shuffle(shown)
        out.append(shown)
    return out


class GenerativeClassificationScoring(GenerativeClassificationPrediction, SingleLabelScoring):
    """Scored as single-label classification; its prompting baselines answer as its prediction does."""

    def prompting_baselines(
        self,
        pretrained: Callable[[], Path],
        card: ModelCard,
        train: pd.DataFrame,
        test: pd.DataFrame,
        params: PromptingParams,
    ) -> dict[str, dict[str, Any]]:
        """The untuned pretrained model on the test split, prompted with `shots` demonstrations drawn for
        each text (0: the prompt alone), once per seed of `seeds` (zero-shot once: it draws nothing), scored
        like the fine-tuned model: the summary metrics' mean over the seeds and their standard deviation, the
        share of free generations that are no label word, and the cost (seconds, generated tokens/s, prompt
        tokens). With `calibrate`, each k also gets a calibrated row: the same scores divided by those after
        the same prompt with a content-free text (contextual calibration, Zhao et al. 2021), which undoes the
        prompt's bias towards one label (what makes raw few-shot answer one label for most texts)."""
        base, tokenizer = base_model(pretrained)
        texts, true = test[data.TEXT].tolist(), test[data.LABEL].astype(str).tolist()
        words = label_words(card.encoding.prompt, card.labels)
        firsts = first_tokens(tokenizer, words)
        word_of = dict(zip(card.labels, words))
        pool_texts, pool_answers = train[data.TEXT].tolist(), [word_of[str(v)] for v in train[data.LABEL]]
        batch_size = 16
        out: dict[str, dict[str, Any]] = {}
        for k in params.shots:
            runs: dict[str, list[dict[str, Any]]] = {"raw": [], "calibrated": []}
            for seed in params.seeds if k else params.seeds[:1]:
                started = time.perf_counter()
                shown = demonstrations_for(texts, pool_texts, pool_answers, k, seed)
                prompts, _, _ = self._prompts(tokenizer, card.encoding, card.labels, texts, shown)
                generated, measured = self._answers(
                    base, tokenizer, prompts, words, card.labels, card.encoding.prompt.max_new_tokens, batch_size
                )
                cost = {
                    **measured,
                    "seconds": round(time.perf_counter() - started, 1),
                    "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1) if prompts else 0.0,
                }
                pred = [card.labels[i] for i in generated.first_scores.argmax(axis=1)]
                runs["raw"].append({**self.summary_scores(true, pred, card.labels), **cost})
                if params.calibrate:
                    started = time.perf_counter()
                    empty, _, _ = self._prompts(
                        tokenizer, card.encoding, card.labels, [CONTENT_FREE] * len(texts), shown
                    )
                    free = next_token_scores(base, tokenizer, empty, firsts, batch_size)
                    calibrated = contextually_calibrated(generated.first_scores, free)
                    pred = [card.labels[i] for i in calibrated.argmax(axis=1)]
                    extra = {"seconds": round(cost["seconds"] + time.perf_counter() - started, 1)}
                    runs["calibrated"].append({**self.summary_scores(true, pred, card.labels), **cost, **extra})
            name = "zero-shot" if k == 0 else f"{k}-shot"
            for kind, rows in runs.items():
                if rows:
                    key = name if kind == "raw" else f"{name} calibrated"
                    out[key] = prompting_row(k, kind == "calibrated", rows, self.summary_metrics)
        return out


CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)


def contextually_calibrated(scores: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Label-word log-probabilities (texts, labels) calibrated by those after the same prompt with the
    content-free text: log p - log p_cf, each over the label words renormalised first (Zhao et al. 2021's
    W = diag(p_cf)^-1 with b = 0); the argmax is the calibrated label. Written here: no library has it."""

    def normalised(logp: np.ndarray) -> np.ndarray:
        return logp - np.logaddexp.reduce(logp, axis=1, keepdims=True)

    return normalised(scores) - normalised(content_free)


def seed_summary(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """The runs of several seeds as one row: each number's mean, the summary metrics' standard deviation
    (`<metric>_sd`, 0 for one run), and the seconds of all runs together."""
    row: dict[str, Any] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "seconds"}
    row |= {f"{m}_sd": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0 for m in metrics}
    row["seconds"] = round(sum(r["seconds"] for r in rows), 1)
    return row


def prompting_row(shots: int, calibrated: bool, runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """One row of the prompting baselines: how it was prompted, its runs' `seed_summary`, how many seeds,
    and the evaluate process's peak RSS so far."""
    return {
        "shots": shots,
        "calibrated": calibrated,
        **seed_summary(runs, metrics),
        "seeds": len(runs),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


class TextGenerationScoring(TextGenerationSpec, Scoring):
    def test_metrics(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, Any]:
        return self.summary_scores(true, pred, labels)

    def summary_scores(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, float]:
        """Means over the examples of ROUGE-L F1, sentence chrF, sentence BLEU and exact match."""
        scores = np.array([response_scores(t, p) for t, p in zip(true, pred)]).reshape(-1, len(RESPONSE_STATS))
        return {name: float(scores[:, i].mean()) if len(scores) else 0.0 for i, name in enumerate(RESPONSE_STATS)}

    def confusion_pairs(self, true: list[Any], pred: list[Any]) -> pd.DataFrame:
        return pd.DataFrame(columns=["actual", "predicted"])  # free text has no confusion matrix

    def error_examples(
        self, texts: list[str], result: Outcomes, probabilities: np.ndarray | None, labels: list[str], k: int
    ) -> pd.DataFrame:
        """The k best and k worst generations by ROUGE-L."""
        frame = pd.DataFrame(
            {
                "text": texts,
                "gold": result.true,
                "predicted": result.pred,
                "score": [response_scores(t, p)[0] for t, p in zip(result.true, result.pred)],
            }
        )
        out = pd.concat(
            [frame.nlargest(k, "score").assign(kind="best"), frame.nsmallest(k, "score").assign(kind="worst")],
            ignore_index=True,
        )
        return out.assign(**{"class": ""})[["kind", "class", "text", "gold", "predicted", "score"]]

    def baseline_outcomes(
        self, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], params: BaselineParams
    ) -> tuple[list[Any], list[Any]]:
        """Lead: the text's first n words, n the median length of the train responses (the classic
        reference for summaries and headlines: articles put their gist first)."""
        n = max(1, int(train[data.LABEL].str.split().map(len).median()))
        return test[data.LABEL].tolist(), [" ".join(text.split()[:n]) for text in test[data.TEXT]]

    def prompting_baselines(
        self,
        pretrained: Callable[[], Path],
        card: ModelCard,
        train: pd.DataFrame,
        test: pd.DataFrame,
        params: PromptingParams,
    ) -> dict[str, dict[str, Any]]:
        """The untuned pretrained model on the test split, with `shots` demonstrations (train texts and
        their responses) drawn for each text, once per seed of `seeds` (zero-shot once): the summary
        metrics' mean over the seeds and their standard deviation, and the cost."""
        base, tokenizer = base_model(pretrained)
        spec = card.encoding
        texts, true, histories = test[data.TEXT].tolist(), test[data.LABEL].tolist(), chat_histories(test)
        out: dict[str, dict[str, Any]] = {}
        for k in params.shots:
            runs = []
            for seed in params.seeds if k else params.seeds[:1]:
                started = time.perf_counter()
                shown = demonstrations_for(texts, train[data.TEXT].tolist(), train[data.LABEL].tolist(), k, seed)
                prompts, _ = prompt_ids(
                    tokenizer, spec.prompt, texts, spec.max_length, spec.prompt.max_new_tokens + 1, shown, histories
                )
                generated = generate(base, tokenizer, prompts, spec.prompt.max_new_tokens, 16)
                seconds = time.perf_counter() - started
                runs.append(
                    {
                        **self.summary_scores(true, generated.texts, []),
                        "generated_tokens_per_second": generated.tokens / seconds if seconds > 0 else 0.0,
                        "seconds": round(seconds, 1),
                        "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1) if prompts else 0.0,
                    }
                )
            out["zero-shot" if k == 0 else f"{k}-shot"] = prompting_row(k, False, runs, self.summary_metrics)
        return out


@functools.cache
def _rouge_l() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@functools.cache
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


@functools.cache
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    # effective_order: a short generation with no 4-gram match scores by the orders it has, not 0
    return BLEU(effective_order=True)


@functools.lru_cache(maxsize=1 << 16)
def response_scores(reference: str, generated: str) -> tuple[float, float, float, float]:
    """ROUGE-L F1 (rouge-score, stemmed), chrF and sentence BLEU (sacrebleu, on a 0-1 scale) and exact
    match (case and spaces aside) of one generation, in RESPONSE_STATS' order. Per generation, so that
    intervals resample generations (the BLEU reported is the mean sentence BLEU, not corpus BLEU). Cached:
    bootstrap intervals score the same pairs thousands of times."""
    return (
        float(_rouge_l().score(reference, generated)["rougeL"].fmeasure),
        float(_chrf().sentence_score(generated, [reference]).score) / 100,
        float(_bleu().sentence_score(generated, [reference]).score) / 100,
        float(" ".join(reference.lower().split()) == " ".join(generated.lower().split())),
    )
