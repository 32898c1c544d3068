"""Prompts for decoder language models: one path from a text to the tokens a decoder reads, shared by
training (tokenize), prediction (Predictor, serving) and the zero-/few-shot baselines (evaluate).

A text goes into `tokenize.prompt.template` as the user's message of a chat (the tokenizer's chat template
renders it; a tokenizer without one gets the plain text), and the model answers with the label's word
(`tokenize.prompt.label_words`) followed by the end-of-turn token. The text alone is cut when the prompt
would not leave room for the answer within `tokenize.max_length`, so the template's instruction is never
lost. Few-shot prompts put demonstrations from the train split before the text as earlier turns of the
same chat, and a chat read from data (`ingest.messages_column`) brings its own earlier turns (`History`),
whose oldest exchanges are dropped when they leave no room.

transformers has the chat template, padding and `generate`; what it does not have, and is written here:
cutting the text inside a template, reading label words' scores off one forward pass, and drawing
demonstrations that never contain the text they are shown with.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic
import torch

from pipeline.encoding import IGNORE_INDEX, bounded
from pipeline.errors import PipelineError
from pipeline.schema import PromptParams


@dataclass(frozen=True)
class Sampling:
    """How a free generation picks its tokens: greedy by default (temperature 0: evaluate's scores are
    reproducible), or sampled at `temperature` from the `top_p` nucleus and the `top_k` likeliest tokens
    (0: all), seeded by `seed` so the same request gives the same text. Chosen per request (serving's
    params, `pipeline.predict --temperature ...`), never at training."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise ValueError(f"temperature: a number from 0 (greedy) to 100 (got {self.temperature!r})")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p: a share above 0 and at most 1 (got {self.top_p!r})")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k: a count of tokens, 0 for all (got {self.top_k!r})")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed: a non-negative integer (got {self.seed!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_options(self) -> dict[str, Any]:
        """`generate`'s keyword arguments for this choice."""
        if self.greedy:
            return {"do_sample": False}
        return {
            "do_sample": True,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": self.top_k,
        }


GREEDY = Sampling()


@dataclass(frozen=True)
class Demonstration:
    """One solved example shown in a few-shot prompt."""

    text: str
    answer: str


@dataclass(frozen=True)
class History:
    """The turns of a chat before its last user message: the chat's own system message (None: the
    prompt's, `tokenize.prompt.system`) and its earlier user/assistant exchanges, oldest first. They are
    shown as they were said (the template wraps only the last user message), after any demonstrations."""

    system: str | None = None
    exchanges: tuple[Demonstration, ...] = ()

    def to_json(self) -> str:
        return _HISTORY_JSON.dump_json(self).decode()

    @staticmethod
    def from_json(text: str) -> History:
        return _HISTORY_JSON.validate_json(text)


NO_HISTORY = History()
_HISTORY_JSON = pydantic.TypeAdapter(History)  # how a history is stored in a table column


def label_words(spec: PromptParams, labels: Sequence[str]) -> list[str]:
    """The word the model answers for each label, in label order (the label itself when none is given)."""
    words = dict(spec.label_words or {})
    unknown = sorted(set(words) - set(labels))
    if unknown:
        raise PipelineError(f"tokenize.prompt.label_words: {unknown[0]!r} is not a label ({', '.join(labels)})")
    return [words.get(label, label) for label in labels]


def end_of_turn(tokenizer: Any) -> int:
    """The token that ends an answer and stops generation: the tokenizer's eos (the chat template's
    end-of-turn token for instruction-tuned models, <|im_end|> for SmolLM2)."""
    if tokenizer.eos_token_id is None:
        raise PipelineError("the tokenizer has no eos token, so an answer could never end")
    return int(tokenizer.eos_token_id)


def first_tokens(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token of each label word, which scores it. They must differ: a label is read off the
    next-token distribution after the prompt in one forward pass (the word's probability when it is one
    token, as the default words are; for longer words, the probability of starting it)."""
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
    for word, word_ids in zip(words, ids):
        if not word_ids:
            raise PipelineError(f"tokenize.prompt.label_words: {word!r} is no token at all")
    firsts = [word_ids[0] for word_ids in ids]
    if len(set(firsts)) < len(firsts):
        clash = next(w for w, f in zip(words, firsts) if firsts.count(f) > 1)
        raise PipelineError(
            f"tokenize.prompt.label_words: {clash!r} starts with the same token as another label word; choose "
            "words whose first tokens differ"
        )
    return firsts


def render(
    tokenizer: Any,
    spec: PromptParams,
    text: str,
    demonstrations: Sequence[Demonstration] = (),
    history: History = NO_HISTORY,
) -> str:
    """The prompt string for `text`, after the demonstrations and the chat's history, ready for the
    answer to follow."""
    system = spec.system if history.system is None else history.system
    turns: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for shown in demonstrations:
        turns += [
            {"role": "user", "content": spec.template.format(text=shown.text)},
            {"role": "assistant", "content": shown.answer},
        ]
    for said in history.exchanges:
        turns += [{"role": "user", "content": said.text}, {"role": "assistant", "content": said.answer}]
    turns.append({"role": "user", "content": spec.template.format(text=text)})
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(f"{t['content']}\n" for t in turns)  # a base model: the turns as plain lines


def text_budget(
    tokenizer: Any, spec: PromptParams, max_length: int, answer_tokens: int, system: str | None = None
) -> int:
    """Tokens left for the text itself once the template (with a chat's own `system` message) and the
    answer are counted."""
    overhead = len(
        tokenizer(render(tokenizer, spec, "", history=History(system)), add_special_tokens=False)["input_ids"]
    )
    budget = max_length - overhead - answer_tokens
    if budget < 1:
        raise PipelineError(
            f"tokenize.max_length: {max_length} tokens leave no room for the text (the prompt takes {overhead}, "
            f"the answer {answer_tokens})"
        )
    return budget


def cut_texts(tokenizer: Any, texts: Sequence[str], budget: int) -> tuple[list[str], list[bool]]:
    """Each text cut to its first `budget` tokens, and whether it was cut."""
    texts = [bounded(text, budget) for text in texts]  # a huge text is never tokenized whole
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    cut = [len(i) > budget for i in ids]
    return [tokenizer.decode(i[:budget]) if c else t for t, i, c in zip(texts, ids, cut)], cut


def prompt_ids(
    tokenizer: Any,
    spec: PromptParams,
    texts: Sequence[str],
    max_length: int,
    answer_tokens: int,
    demonstrations: Sequence[Sequence[Demonstration]] | None = None,
    histories: Sequence[History] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """The prompt tokens of each text (with its own demonstrations and chat history, if given), every text
    (shown ones too) cut to the room `max_length` leaves; a history's oldest exchanges are dropped while
    the prompt without demonstrations would leave no room for the answer. And whether each text was cut
    (or lost turns of its history)."""

    def encoded(prompt: str) -> list[int]:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    histories = list(histories) if histories is not None else [NO_HISTORY] * len(texts)
    budgets = {  # a chat's own system message takes room too
        system: text_budget(tokenizer, spec, max_length, answer_tokens, system)
        for system in {None, *(history.system for history in histories)}
    }
    texts, cut = list(texts), [False] * len(texts)
    for system, budget in budgets.items():
        rows = [i for i, history in enumerate(histories) if history.system == system]
        for i, piece, was_cut in zip(rows, *cut_texts(tokenizer, [texts[i] for i in rows], budget)):
            texts[i], cut[i] = piece, was_cut
    shown: list[Sequence[Demonstration]] = list(demonstrations) if demonstrations is not None else [()] * len(texts)
    shown_texts = sorted({d.text for examples in shown for d in examples})
    cut_shown = dict(zip(shown_texts, cut_texts(tokenizer, shown_texts, budgets[None])[0]))
    prompts = []
    for i, (text, examples, history) in enumerate(zip(texts, shown, histories)):
        while (
            history.exchanges and len(encoded(render(tokenizer, spec, text, (), history))) + answer_tokens > max_length
        ):
            history, cut[i] = History(history.system, history.exchanges[1:]), True
        examples = [Demonstration(cut_shown[d.text], d.answer) for d in examples]
        prompts.append(encoded(render(tokenizer, spec, text, examples, history)))
    return prompts, cut


def answer_ids(tokenizer: Any, word: str) -> list[int]:
    """The tokens the model is trained to answer: the word, then the end of the turn."""
    return tokenizer(word, add_special_tokens=False)["input_ids"] + [end_of_turn(tokenizer)]


def training_example(prompt: list[int], answer: list[int]) -> dict[str, list[int]]:
    """Inputs and labels of one example: the loss is on the answer's tokens only (the prompt's positions
    are IGNORE_INDEX), so the model learns to answer, not to reproduce prompts."""
    ids = prompt + answer
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
        "length": len(ids),
    }


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


def left_padded(tokenizer: Any, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    """A batch padded on the left, so every row's last token is the last position (where generation
    continues and the next token is read), with position ids that start at each row's first real token:
    the padding then changes nothing a row computes."""
    batch = tokenizer.pad({"input_ids": list(prompts)}, padding_side="left", return_tensors="pt")
    batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    return batch


@torch.inference_mode()
def next_token_scores(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], token_ids: Sequence[int], batch_size: int
) -> np.ndarray:
    """log p(token | prompt) of each of `token_ids` after each prompt: (prompts, tokens). Only the last
    position's logits are computed (`logits_to_keep`): a full row of vocabulary logits per position would
    take gigabytes for a 49k vocabulary."""
    out = np.zeros((len(prompts), len(token_ids)), dtype=np.float32)
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths together: little padding
    wanted = torch.tensor(list(token_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = model(**left_padded(tokenizer, [prompts[i] for i in chunk]), logits_to_keep=1).logits[:, -1]
        out[chunk] = torch.log_softmax(logits.float(), dim=-1)[:, wanted].numpy()
    return out


@dataclass
class Generated:
    """What `generate` returns: each prompt's text, the tokens generated in all (the end-of-turn token
    counted where it came), and, when asked for, each prompt's `next_token_scores` of the scored tokens,
    read off the forward pass the generation starts with (scoring and generating then cost one pass over
    the prompt, not two)."""

    texts: list[str]
    tokens: int
    first_scores: np.ndarray | None = None


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    sampling: Sampling = GREEDY,
    scored: Sequence[int] = (),
) -> Generated:
    """Continuations of each prompt (greedy unless `sampling` says otherwise), batched with left padding
    (generate's contract: every row ends where the new tokens start) and the KV cache; a row stops at the
    end-of-turn token. With `scored` token ids, also log p(token | prompt) of each, as `next_token_scores`."""
    end = end_of_turn(tokenizer)
    if not sampling.greedy:
        torch.manual_seed(sampling.seed)  # generate draws from torch's global generator: it takes no other
    texts: list[str] = [""] * len(prompts)
    scores = np.zeros((len(prompts), len(scored)), dtype=np.float32) if scored else None
    produced = 0
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = left_padded(tokenizer, [prompts[i] for i in chunk])
        batch.pop("position_ids")  # generate derives them from the attention mask, step by step
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            **sampling.generate_options(),
            eos_token_id=end,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end,
            return_dict_in_generate=True,
            output_logits=scores is not None,  # the raw logits of each step, before any sampling warper
        )
        if scores is not None:
            scores[chunk] = torch.log_softmax(output.logits[0].float(), dim=-1)[:, list(scored)].numpy()
        new = output.sequences[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            tokens = new[row].tolist()
            tokens = tokens[: tokens.index(end)] if end in tokens else tokens
            produced += len(tokens) + (len(tokens) < new.shape[1])  # the end token counts when it came
            texts[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Generated(texts, produced, scores)


def matching_label(generated: str, words: Sequence[str], labels: Sequence[str]) -> str | None:
    """The label whose word a free generation is, ignoring case, spaces and end punctuation; None when it
    is no label word at all."""
    said = generated.strip().strip(".!").strip().lower()
    return next((label for label, word in zip(labels, words) if word.strip().lower() == said), None)
