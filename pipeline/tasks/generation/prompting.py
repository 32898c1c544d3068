"""Prompts for decoder language models: one path from a text to the tokens a decoder reads, shared by
training (tokenize), prediction (Predictor, serving) and the zero-/few-shot baselines (evaluate); what a
decoder then generates is pipeline/tasks/generation/generating.py.

A text goes into `tokenize.prompt.template` as the user's message of a chat (the tokenizer's chat template
renders it; a tokenizer without one gets the plain text), and the model answers with the label's word
(`tokenize.prompt.label_words`) followed by the end-of-turn token. The text alone is cut when the prompt
would not leave room for the answer within `tokenize.max_length`, so the template's instruction is never
lost. Few-shot prompts put demonstrations from the train split before the text as earlier turns of the
same chat, and a chat read from data (`ingest.messages_column`) brings its own earlier turns (`History`),
whose oldest exchanges are dropped when they leave no room.

transformers has the chat template; what it does not have, and is written here: cutting the text inside a
template so the instruction and the answer's room are kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from pipeline.data.encoding import IGNORE_INDEX, bounded
from pipeline.errors import PipelineError
from pipeline.schema import PromptParams


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
    """The token that ends an assistant's turn and stops generation, read from the chat template: the first
    special token after a reply (SmolLM2's <|im_end|>, Llama 3's <|eot_id|>); the tokenizer's eos where
    there is no template, or the template ends a turn with no special token."""
    if tokenizer.eos_token_id is None:
        raise PipelineError("the tokenizer has no eos token, so an answer could never end")
    return _template_end_of_turn(tokenizer) if tokenizer.chat_template else int(tokenizer.eos_token_id)


@functools.lru_cache(maxsize=8)  # a tokenizer keeps its template: probed once, not per text
def _template_end_of_turn(tokenizer: Any) -> int:
    """The first token the template writes after a reply, where it is a special token (or the eos)."""
    asked, reply = [{"role": "user", "content": "?"}], "!"
    prompt = tokenizer.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
    chat = tokenizer.apply_chat_template([*asked, {"role": "assistant", "content": reply}], tokenize=False)
    if chat.startswith(prompt + reply):
        after = tokenizer(chat[len(prompt + reply) :], add_special_tokens=False)["input_ids"]
        if after and (after[0] in tokenizer.all_special_ids or after[0] == tokenizer.eos_token_id):
            return int(after[0])
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


def prompts_and_histories(
    tokenizer: Any,
    spec: PromptParams,
    texts: Sequence[str],
    max_length: int,
    answer_tokens: int,
    demonstrations: Sequence[Sequence[Demonstration]] | None = None,
    histories: Sequence[History] | None = None,
) -> tuple[list[list[int]], list[bool], list[History]]:
    """The prompt tokens of each text (with its own demonstrations and chat history, if given), every text
    (shown ones too) cut to the room `max_length` leaves; a history's oldest exchanges are dropped while
    the prompt without demonstrations would leave no room for the answer. And whether each text was cut
    (or lost turns of its history); and the history each prompt kept."""

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
    prompts, kept = [], []
    for i, (text, examples, history) in enumerate(zip(texts, shown, histories)):
        while (
            history.exchanges and len(encoded(render(tokenizer, spec, text, (), history))) + answer_tokens > max_length
        ):
            history, cut[i] = History(history.system, history.exchanges[1:]), True
        examples = [Demonstration(cut_shown[d.text], d.answer) for d in examples]
        prompts.append(encoded(render(tokenizer, spec, text, examples, history)))
        kept.append(history)
    return prompts, cut, kept


def prompt_ids(
    tokenizer: Any,
    spec: PromptParams,
    texts: Sequence[str],
    max_length: int,
    answer_tokens: int,
    demonstrations: Sequence[Sequence[Demonstration]] | None = None,
    histories: Sequence[History] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """The prompt tokens of each text and whether it was cut (`prompts_and_histories`, without the kept
    histories)."""
    prompts, cut, _ = prompts_and_histories(
        tokenizer, spec, texts, max_length, answer_tokens, demonstrations, histories
    )
    return prompts, cut


def reply_spans(tokenizer: Any, spec: PromptParams, history: History, prompt: list[int]) -> list[tuple[int, int]]:
    """Where each of a chat history's assistant replies sits in `prompt` (the chat's prompt, rendered
    without demonstrations): (first, last + 1) over the reply's tokens and its end-of-turn token, what a
    multi-turn chat learns besides its last reply. Found by rendering the chat up to each reply; a template
    that renders earlier turns differently once later turns follow stops with one line."""
    if not tokenizer.chat_template or not history.exchanges:
        return []
    system = spec.system if history.system is None else history.system
    turns: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    end, spans = end_of_turn(tokenizer), []
    for said in history.exchanges:
        turns.append({"role": "user", "content": said.text})
        before = tokenizer(
            tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False), add_special_tokens=False
        )["input_ids"]
        start = len(before)
        if prompt[:start] != before or end not in prompt[start:]:
            raise PipelineError(
                "tokenize.prompt.learn_earlier_replies: the chat template renders a chat's earlier turns "
                "differently once later turns follow, so its replies cannot be found in the prompt; set it to "
                "false to learn the last reply only"
            )
        spans.append((start, prompt.index(end, start) + 1))
        turns.append({"role": "assistant", "content": said.answer})
    return spans


def answer_ids(tokenizer: Any, word: str) -> list[int]:
    """The tokens the model is trained to answer: the word, then the end of the turn."""
    return tokenizer(word, add_special_tokens=False)["input_ids"] + [end_of_turn(tokenizer)]


def training_example(
    prompt: list[int], answer: list[int], learnt: Sequence[tuple[int, int]] = ()
) -> dict[str, list[int]]:
    """Inputs and labels of one example: the loss is on the answer's tokens, and on the `learnt` spans of
    the prompt (a chat's earlier replies, `reply_spans`); the rest of the prompt is IGNORE_INDEX, so the
    model learns to answer, not to reproduce prompts."""
    ids = prompt + answer
    labels = [IGNORE_INDEX] * len(prompt) + answer
    for start, stop in learnt:
        labels[start:stop] = prompt[start:stop]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "length": len(ids)}


def answer_room(tokenizer: Any, words: list[str]) -> int:
    """Tokens the longest answer takes (word and end of turn): kept free in every prompt."""
    return max(len(answer_ids(tokenizer, word)) for word in words)
