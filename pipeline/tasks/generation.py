"""Decoder language models: a classification dataset cast as generation.

`generative_classification` fine-tunes a causal LM (SmolLM2 by default in its preset) to answer each text,
wrapped in `tokenize.prompt.template`, with its label's word (`tokenize.prompt.label_words`). Data, splits,
labels, the TF-IDF baseline and every test metric are single-label classification's, so the encoder and
the decoder routes compare on the same test split; what changes:

- training: the loss is on the answer's tokens only (pipeline/prompting.py), LoRA or any peft method
  that applies to decoders, or full fine-tuning;
- the label is read by scoring: the log-probability of each label word's first token after the prompt,
  one forward pass per text (validation, test, serving alike); the scores are the label logits that
  temperature scaling, curves and calibration use;
- a free greedy generation of each test text is also made, and the share that is no label word at all
  reported (`not_a_label_share`): what a user who just prompts would get;
- evaluate also prompts the untuned base model zero-shot and few-shot (`evaluate.prompting`), the
  baselines a fine-tuned decoder must beat.
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pipeline import data
from pipeline.encoding import IGNORE_INDEX
from pipeline.errors import PipelineError
from pipeline.prompting import (
    GREEDY,
    Demonstration,
    Generated,
    History,
    Sampling,
    answer_ids,
    demonstrations_for,
    end_of_turn,
    first_tokens,
    generate,
    label_words,
    matching_label,
    next_token_scores,
    prompt_ids,
    training_example,
)
from pipeline.tasks.base import Outcomes, Task
from pipeline.tasks.classification import SingleLabelClassification

if TYPE_CHECKING:
    from pipeline.card import EncodingSpec, ModelCard
    from pipeline.schema import BaselineParams, IngestParams, Params, PromptingParams, PromptParams, TokenizeParams


def answer_room(tokenizer: Any, words: list[str]) -> int:
    """Tokens the longest answer takes (word and end of turn): kept free in every prompt."""
    return max(len(answer_ids(tokenizer, word)) for word in words)


class Decoder:
    """What every decoder task shares: a causal LM whose vocabulary is the head, prompted through the chat
    template, trained on the answer's tokens. Listed first among a task's bases."""

    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    reads_prompts: ClassVar[bool] = True
    pools_a_text: ClassVar[bool] = False  # the vocabulary is the head
    model_loss_counts_items: ClassVar[bool] = True  # the causal LM loss takes num_items_in_batch
    not_exportable: ClassVar[str | None] = (
        "decoder models are not exported to ONNX yet (the export covers encoder classifiers); PyTorch serves it"
    )

    def check_params(self, params: Params) -> None:
        super().check_params(params)  # type: ignore[misc]
        name = params.task
        if params.ingest.format == "conll":
            raise ValueError(f"ingest.format: task {name} needs a text format, not conll")
        if params.tokenize.context != "none" or params.tokenize.mark_case:
            key = "context" if params.tokenize.context != "none" else "mark_case"
            raise ValueError(f"tokenize.{key}: for token_classification (task is {name})")
        if params.ingest.text_pair:
            raise ValueError(f"ingest.text_column: task {name} reads one text per prompt, not pairs")
        if params.tokenize.truncation != "head":
            raise ValueError(f"tokenize.truncation: task {name} cuts the text's end only (head)")
        if params.tokenize.max_chars is not None:
            raise ValueError(f"tokenize.max_chars: for text classification; task {name} cuts its prompt's text")
        if params.finetune.class_weights is not None or params.finetune.label_smoothing:
            key = "class_weights" if params.finetune.class_weights is not None else "label_smoothing"
            raise ValueError(f"finetune.{key}: not available for {name} (the loss is the answer's tokens)")
        if params.finetune.head_learning_rate is not None:
            raise ValueError(f"finetune.head_learning_rate: a decoder has no new head ({name})")

    def check_model(self, model_config: dict[str, Any], source: str) -> None:
        # The vocabulary is the head: only a causal LM can write the answer (an encoder stops later, at
        # the tokenizer's missing end-of-text token, or trains nonsense).
        architectures = model_config.get("architectures") or []
        if not any(str(name).endswith("ForCausalLM") for name in architectures):
            raise PipelineError(
                f"model.source: {source} is not a causal language model (architectures: "
                f"{', '.join(map(str, architectures)) or 'none'}); task {self.name} needs a decoder such as "
                "SmolLM2 (presets/sentiment-smollm2.yaml)"
            )

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        return {}  # the vocabulary is the head: answers are words, not new outputs

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # Pads inputs with the pad token and labels with IGNORE_INDEX, each batch to its longest member.
        return DataCollatorForSeq2Seq(
            tokenizer, padding=True, pad_to_multiple_of=pad_to_multiple_of, label_pad_token_id=IGNORE_INDEX
        )

    @staticmethod
    def examples(prompts: list[list[int]], answers: list[list[int]], cut: list[bool]) -> Any:
        """The tokenized split: each prompt with its answer (the loss on the answer), and whether its text
        was cut to fit."""
        from datasets import Dataset

        rows = [{**training_example(p, a), "cut": c} for p, a, c in zip(prompts, answers, cut)]
        return Dataset.from_list(rows) if rows else Dataset.from_dict({"input_ids": [], "labels": [], "length": []})

    def truncated(self, encoded: Any, table: pd.DataFrame, max_length: int) -> int:
        return int(sum(encoded["cut"])) if "cut" in encoded.column_names else 0

    @staticmethod
    def base_model(pretrained: Callable[[], Path]) -> tuple[Any, Any]:
        """The untuned pretrained model and its tokenizer, for prompting baselines."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = pretrained()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, use_safetensors=True)
        return model.eval(), tokenizer


class GenerativeClassification(Decoder, SingleLabelClassification):
    """One label per text, answered in words by a decoder LM and read off the label words' scores."""

    name: ClassVar[str] = "generative_classification"
    description: ClassVar[str] = (
        "a decoder LM answers each text (tokenize.prompt.template) with its label's word; one label per text"
    )

    # ---- tokenize ----------------------------------------------------------------------------------
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Prompt and answer tokens of each row, labels masked to the answer; `cut` marks cut texts."""

        words = label_words(params.prompt, labels)
        first_tokens(tokenizer, words)  # refuse label words that cannot be told apart, before training
        answers = [answer_ids(tokenizer, word) for word in words]
        prompts, cut = prompt_ids(
            tokenizer, params.prompt, table[data.TEXT].tolist(), params.max_length, answer_room(tokenizer, words)
        )
        return self.examples(prompts, [answers[target] for target in self.label_targets(table, labels)], cut)

    # ---- finetune ----------------------------------------------------------------------------------
    def metric_logits(
        self, tokenizer: Any, labels: list[str], params: TokenizeParams
    ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """Of each evaluation batch, keep the label words' scores where the answer starts and the gold
        label id: (batch, labels) and (batch,), instead of (batch, positions, vocabulary) logits."""
        firsts = torch.tensor(first_tokens(tokenizer, label_words(params.prompt, labels)))

        def keep(logits: Any, token_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = logits[0] if isinstance(logits, tuple) else logits
            rows = torch.arange(len(token_labels))
            start = (token_labels != IGNORE_INDEX).int().argmax(dim=1)  # the answer's first position
            scores = torch.log_softmax(logits[rows, start - 1].float(), dim=-1)[:, firsts.to(logits.device)]
            gold = (token_labels[rows, start].unsqueeze(1) == firsts.to(token_labels.device)).int().argmax(dim=1)
            return scores, gold

        return keep

    def metric_arrays(self, predictions: Any, label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, gold = predictions  # what metric_logits kept
        return np.asarray(scores), np.asarray(gold)

    # ---- predict -----------------------------------------------------------------------------------
    def example_logits(self, predictor: Any, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """The label words' scores after each text's prompt, without generating."""
        tokenizer = predictor.tokenizer
        prompts, words, _ = self._prompts(tokenizer, predictor.encoding, predictor.labels, texts)
        return next_token_scores(
            predictor.model, tokenizer, prompts, first_tokens(tokenizer, words), predictor.batch_size
        )

    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """Label and scores as for any classifier; `generated`, the model's own answer left free (greedy
        unless batch prediction samples), whose first step gives the scores, so both cost one pass over
        each prompt plus at most `max_new_tokens` cached steps; and `cut`: whether the text was cut to fit
        the prompt (tokenize.max_length), so a caller knows the answer read only the text's beginning."""
        generated, _, cut = self._answered(predictor, texts)
        frame = self.predict_frame(
            generated.first_scores / predictor.card.temperature, predictor.labels, predictor.card.thresholds
        )
        frame["generated"] = generated.texts
        frame["cut"] = cut
        return frame

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        """Labels read off the label words' scores as for any classifier, and, from the same pass over each
        prompt, a free generation: how often the model, left to generate, says no label word at all."""
        true = self.checked_truth(table, predictor.labels, source)
        generated, measured, _ = self._answered(predictor, table[data.TEXT])
        return self.scored_outcomes(predictor, table, true, generated.first_scores, measured)

    def _answered(self, predictor: Any, texts: Any) -> tuple[Generated, dict[str, float], list[bool]]:
        """The fine-tuned model's answers to `texts` (`_answers`), and which texts were cut to fit."""
        prompts, words, cut = self._prompts(predictor.tokenizer, predictor.encoding, predictor.labels, texts)
        generated, measured = self._answers(
            predictor.model,
            predictor.tokenizer,
            prompts,
            words,
            predictor.labels,
            predictor.encoding.prompt.max_new_tokens,
            predictor.batch_size,
            predictor.sampling,
        )
        return generated, measured, cut

    def _prompts(
        self, tokenizer: Any, spec: EncodingSpec, labels: list[str], texts: Any, demonstrations: Any = None
    ) -> tuple[list[list[int]], list[str], list[bool]]:
        """Prompt tokens of each text, the label words, and which texts were cut to fit."""
        prompt: PromptParams = spec.prompt
        words = label_words(prompt, labels)
        prompts, cut = prompt_ids(
            tokenizer, prompt, list(texts), spec.max_length, answer_room(tokenizer, words), demonstrations
        )
        return prompts, words, cut

    def _answers(
        self,
        model: Any,
        tokenizer: Any,
        prompts: list[list[int]],
        words: list[str],
        labels: list[str],
        max_new_tokens: int,
        batch_size: int,
        sampling: Sampling = GREEDY,
    ) -> tuple[Generated, dict[str, float]]:
        """A free generation after each prompt with, from its first step, the label words' scores; and
        the share of generations that are no label word, and the generated tokens per second."""
        started = time.perf_counter()
        generated = generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, sampling, scored=first_tokens(tokenizer, words)
        )
        seconds = time.perf_counter() - started
        said = [matching_label(text, words, labels) for text in generated.texts]
        return generated, {
            "not_a_label_share": float(np.mean([label is None for label in said])) if said else 0.0,
            "generated_tokens_per_second": generated.tokens / seconds if seconds > 0 else 0.0,
        }

    # ---- evaluate ----------------------------------------------------------------------------------
    def prompting_baselines(
        self,
        pretrained: Callable[[], Path],
        card: ModelCard,
        train: pd.DataFrame,
        test: pd.DataFrame,
        params: PromptingParams,
    ) -> dict[str, dict[str, Any]]:
        """The untuned pretrained model on the test split, prompted with `shots` demonstrations each
        (0: the prompt alone), scored like the fine-tuned model: summary metrics, the share of free
        generations that are no label word, and the cost (seconds, generated tokens/s, prompt tokens)."""
        base, tokenizer = self.base_model(pretrained)
        texts, true = test[data.TEXT].tolist(), test[data.LABEL].astype(str).tolist()
        words = label_words(card.encoding.prompt, card.labels)
        word_of = dict(zip(card.labels, words))
        pool_texts, pool_answers = train[data.TEXT].tolist(), [word_of[str(v)] for v in train[data.LABEL]]
        batch_size = 16
        out: dict[str, dict[str, Any]] = {}
        for k in params.shots:
            started = time.perf_counter()
            shown = demonstrations_for(texts, pool_texts, pool_answers, k, params.seed)
            prompts, _, _ = self._prompts(tokenizer, card.encoding, card.labels, texts, shown)
            generated, measured = self._answers(
                base, tokenizer, prompts, words, card.labels, card.encoding.prompt.max_new_tokens, batch_size
            )
            pred = [card.labels[i] for i in generated.first_scores.argmax(axis=1)]
            out["zero-shot" if k == 0 else f"{k}-shot"] = {
                "shots": k,
                **self.summary_scores(true, pred, card.labels),
                **measured,
                "seconds": round(time.perf_counter() - started, 1),
                "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1) if prompts else 0.0,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        return out


RESPONSE_STATS = ("rouge_l", "chrf", "exact_match")


@functools.cache
def _rouge_l() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@functools.cache
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


@functools.lru_cache(maxsize=1 << 16)
def response_scores(reference: str, generated: str) -> tuple[float, float, float]:
    """ROUGE-L F1 (rouge-score, stemmed), chrF (sacrebleu, on a 0-1 scale) and exact match (case and
    spaces aside) of one generation. Cached: bootstrap intervals score the same pairs thousands of times."""
    return (
        float(_rouge_l().score(reference, generated)["rougeL"].fmeasure),
        float(_chrf().sentence_score(generated, [reference]).score) / 100,
        float(" ".join(reference.lower().split()) == " ".join(generated.lower().split())),
    )


INPUT_SEPARATOR = "\n\n"  # between an instruction and its input, as Alpaca's prompts have them
CHAT_TEXT, CHAT_RESPONSE, CHAT_HISTORY = "chat_text", "chat_response", "chat_history"  # what a chat is read into


def with_inputs(raw: pd.DataFrame, path: Path, params: IngestParams) -> pd.DataFrame:
    """The text column with `ingest.input_column` appended after a blank line where both have text (an
    instruction without input is the whole prompt; a record without an instruction is dropped later)."""
    text_column, input_column = str(params.text_column), str(params.input_column)
    data.require_columns(raw, path, text_column, input_column)

    def present(value: Any) -> bool:
        return not data.is_missing(value) and bool(str(value).strip())

    def joined(text: Any, extra: Any) -> Any:
        return f"{str(text).strip()}{INPUT_SEPARATOR}{str(extra).strip()}" if present(text) and present(extra) else text

    return raw.assign(**{text_column: [joined(t, e) for t, e in zip(raw[text_column], raw[input_column])]})


def chats(raw: pd.DataFrame, path: Path, where: str, params: IngestParams) -> tuple[pd.DataFrame, IngestParams]:
    """Chats ([{role, content}, ...]: an optional system message, then user and assistant in turn, ending
    with the assistant's reply) as the last user message, the reply learnt, and the history before them
    (prompting.History as JSON); and the params that read them. Anything else stops with its line or row."""
    column = str(params.messages_column)
    data.require_columns(raw, path, column)
    texts, responses, histories = [], [], []
    for row, chat in zip(raw[data.SOURCE_ROW], raw[column]):
        # JSON Lines give lists, Parquet and datasets numpy arrays of dicts.
        turns = list(chat) if isinstance(chat, (list, tuple, np.ndarray)) else None
        if turns is None or not all(
            isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), (str, type(None)))
            for t in turns
        ):
            raise PipelineError(f"{path}: {where} {row}: column '{column}' is not a list of {{role, content}} messages")
        roles = [t["role"] for t in turns]
        system = turns[0]["content"] if roles[:1] == ["system"] else None
        said = turns[1:] if roles[:1] == ["system"] else turns
        if not said or [t["role"] for t in said] != ["user", "assistant"] * (len(said) // 2):
            raise PipelineError(
                f"{path}: {where} {row}: column '{column}': expected an optional system message, then user and "
                f"assistant messages in turn, ending with the assistant's reply (got roles {roles})"
            )
        earlier = [Demonstration(u["content"] or "", a["content"] or "") for u, a in zip(said[:-2:2], said[1:-2:2])]
        texts.append(said[-2]["content"])
        responses.append(said[-1]["content"])
        histories.append(History(system, tuple(earlier)).to_json())
    read = raw.assign(**{CHAT_TEXT: texts, CHAT_RESPONSE: responses, CHAT_HISTORY: histories})
    return read, params.model_copy(update={"text_column": CHAT_TEXT, "label_column": CHAT_RESPONSE})


def chat_histories(table: pd.DataFrame) -> list[History] | None:
    """Each record's chat history, None for records that are not chats."""
    return [History.from_json(h) for h in table[data.HISTORY]] if data.HISTORY in table.columns else None


class TextGeneration(Decoder, Task):
    """Free text: a decoder LM answers each prompt with a response (`ingest.label_column` holds the
    reference responses), scored by ROUGE-L, chrF and exact match against the reference."""

    name: ClassVar[str] = "text_generation"
    generates_text: ClassVar[bool] = True
    description: ClassVar[str] = (
        "a decoder LM answers each text (tokenize.prompt.template) with free text; ingest.label_column holds the "
        "reference responses"
    )
    problem_type: ClassVar[str] = "text_generation"
    headline_metric: ClassVar[str] = "rouge_l"
    summary_metrics: ClassVar[tuple[str, ...]] = RESPONSE_STATS
    validation_metrics_names: ClassVar[tuple[str, ...]] = ()  # the validation loss on the responses decides
    baseline_name: ClassVar[str] = "lead (the text's first words, as many as a median train response)"
    example_unit: ClassVar[str] = "texts"
    error_examples_note: ClassVar[str] = (
        "The generations with the highest and the lowest ROUGE-L against the reference (score: ROUGE-L F1)."
    )

    # ---- ingest and split --------------------------------------------------------------------------
    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
        """Texts and their reference responses; a record without a text or without a response has nothing
        to learn or score and is dropped (counted), as are repeated texts after the first."""
        raw, where = data.read_raw_table(path, params)
        records, dropped = len(raw), {}
        if params.messages_column:
            raw, params = chats(raw, path, where, params)
        if params.input_column:
            raw = with_inputs(raw, path, params)
        for reason, column in (("no_text", params.text_column), ("no_response", params.label_column)):
            if column in raw.columns:  # (select_texts names a missing column)
                empty = raw[column].map(lambda v: data.is_missing(v) or not str(v).strip())
                raw, dropped[reason] = raw[~empty], int(empty.sum())
        table = data.select_texts(raw, path, where, params)
        table[data.LABEL] = table[data.LABEL].map(lambda v: str(v).strip())
        if CHAT_HISTORY in raw.columns:
            table[data.HISTORY] = raw[CHAT_HISTORY]
        repeated = data.example_keys(table).duplicated()
        dropped["duplicate"] = int(repeated.sum())
        return table[~repeated].reset_index(drop=True), records, {"dropped": dropped, "repaired": {}}

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        return []  # responses are free text: no label set

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        described = {**data.describe(table.assign(**{data.LABEL: ""})), "labels": {}}
        words = table[data.LABEL].str.split().map(len)
        described["response_words"] = {
            "mean": round(float(words.mean()), 2) if len(words) else 0.0,
            "median": round(float(words.median()), 2) if len(words) else 0.0,
            "max": int(words.max()) if len(words) else 0,
        }
        return described

    def strata(self, table: pd.DataFrame) -> pd.Series:
        return pd.Series("all", index=table.index)  # nothing to balance: a plain seeded shuffle

    # ---- tokenize ----------------------------------------------------------------------------------
    def encode(self, table: pd.DataFrame, labels: list[str], tokenizer: Any, params: TokenizeParams) -> Any:
        """Prompt and response tokens (the response cut to `max_new_tokens`), labels masked to the
        response; `cut` marks texts cut to fit the prompt."""

        limit = params.prompt.max_new_tokens
        responses = tokenizer(table[data.LABEL].tolist(), add_special_tokens=False)["input_ids"] if len(table) else []
        prompts, cut = prompt_ids(
            tokenizer,
            params.prompt,
            table[data.TEXT].tolist(),
            params.max_length,
            limit + 1,
            histories=chat_histories(table),
        )
        return self.examples(prompts, [response[:limit] + [end_of_turn(tokenizer)] for response in responses], cut)

    # ---- finetune ----------------------------------------------------------------------------------
    def metric_logits(
        self, tokenizer: Any, labels: list[str], params: TokenizeParams
    ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """Keep nothing of the vocabulary logits: the validation loss is the metric."""
        return lambda logits, token_labels: token_labels.new_zeros(len(token_labels), 1)

    def validation_metrics(
        self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], threshold: float = 0.5
    ) -> dict[str, float]:
        return {}

    def balanced_class_weights(self, targets: list[Any], n_labels: int) -> np.ndarray:
        raise NotImplementedError("text generation has no classes (refused in check_params)")

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, int]:
        raise NotImplementedError("text generation keeps the model's own loss (refused in check_params)")

    # ---- predict -----------------------------------------------------------------------------------
    def predict(self, predictor: Any, texts: list[str], pairs: list[str] | None = None) -> pd.DataFrame:
        """The generated response of each text, and whether the text was cut to fit the prompt."""
        return self._respond(predictor, texts, None)

    def _respond(self, predictor: Any, texts: list[str], histories: list[History] | None) -> pd.DataFrame:
        spec = predictor.encoding
        prompts, cut = prompt_ids(
            predictor.tokenizer,
            spec.prompt,
            texts,
            spec.max_length,
            spec.prompt.max_new_tokens + 1,
            histories=histories,
        )
        generated = generate(
            predictor.model,
            predictor.tokenizer,
            prompts,
            spec.prompt.max_new_tokens,
            predictor.batch_size,
            predictor.sampling,
        )
        return pd.DataFrame({"generated": generated.texts, "cut": cut})

    def outcomes(self, predictor: Any, table: pd.DataFrame, source: str) -> Outcomes:
        started = time.perf_counter()
        frame = self._respond(predictor, table[data.TEXT].tolist(), chat_histories(table))
        seconds = time.perf_counter() - started
        tokens = (
            sum(len(ids) for ids in predictor.tokenizer(frame["generated"].tolist())["input_ids"]) if len(frame) else 0
        )
        return Outcomes(
            table[data.LABEL].tolist(),
            frame["generated"].tolist(),
            measured={"generated_tokens_per_second": tokens / seconds if seconds > 0 else 0.0},
        )

    def test_metrics(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, Any]:
        return self.summary_scores(true, pred, labels)

    def summary_scores(self, true: list[Any], pred: list[Any], labels: list[str]) -> dict[str, float]:
        """Means over the examples of ROUGE-L F1, sentence chrF and exact match."""
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

    # ---- evaluate ----------------------------------------------------------------------------------
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
        their responses) before each text: the summary metrics and the cost."""
        base, tokenizer = self.base_model(pretrained)
        spec = card.encoding
        texts, true, histories = test[data.TEXT].tolist(), test[data.LABEL].tolist(), chat_histories(test)
        out: dict[str, dict[str, Any]] = {}
        for k in params.shots:
            started = time.perf_counter()
            shown = demonstrations_for(texts, train[data.TEXT].tolist(), train[data.LABEL].tolist(), k, params.seed)
            prompts, _ = prompt_ids(
                tokenizer, spec.prompt, texts, spec.max_length, spec.prompt.max_new_tokens + 1, shown, histories
            )
            generated = generate(base, tokenizer, prompts, spec.prompt.max_new_tokens, 16)
            seconds = time.perf_counter() - started
            out["zero-shot" if k == 0 else f"{k}-shot"] = {
                "shots": k,
                **self.summary_scores(true, generated.texts, []),
                "generated_tokens_per_second": generated.tokens / seconds if seconds > 0 else 0.0,
                "seconds": round(seconds, 1),
                "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1) if prompts else 0.0,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        return out
