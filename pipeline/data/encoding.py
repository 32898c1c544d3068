"""Turning texts into model inputs when they are longer than `tokenize.max_length`.

One function serves training (tokenize stage) and prediction (Predictor), so a model always sees texts cut
the way it was trained on them:

- `head`: the first max_length tokens (transformers' default truncation);
- `tail`: the last ones;
- `head+tail`: a quarter of the budget from the start, the rest from the end (Sun et al., 2019, found
  this best for long reviews);
- `chunk`: every token, in windows of max_length that overlap by `stride` tokens; the Trainer learns from
  each window with its document's label, and a document's prediction pools its windows' logits (`mean`
  or `max`).

`head` and `chunk` come straight from the fast tokenizer (`return_overflowing_tokens`); `tail` and
`head+tail` are cut here because the tokenizer has no two-sided truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = -100  # positions the loss and the metrics skip (transformers' convention)

# A bound on the characters one token can cover: no vocabulary entry of these models is near that long.
# A text is cut to `tokens * CHARS_PER_TOKEN_BOUND` characters on the side that is kept before it is
# tokenized, which cannot change the tokens kept, but stops a 50 MB text from being tokenized whole
# (7.6 GB peak before). `chunk` keeps every token, so it reads the whole text.
CHARS_PER_TOKEN_BOUND = 1000


def bounded(text: str, tokens: int, keep: str = "head", max_chars: int | None = None) -> str:
    """`text` cut, before tokenizing, to what can hold its first (`head`, `chunk`), last (`tail`) or first
    quarter and last three quarters (`head+tail`) `tokens` tokens; to `max_chars` characters where that is
    less (`chunk`: `max_chars` only)."""
    lossless = None if keep == "chunk" else tokens * CHARS_PER_TOKEN_BOUND
    limit = min(x for x in (lossless, max_chars) if x is not None) if (lossless or max_chars) else None
    if limit is None or len(text) <= limit:
        return text
    if keep in ("head", "chunk"):
        return text[:limit]
    if keep == "tail":
        return text[-limit:]
    head = limit // 4 + (CHARS_PER_TOKEN_BOUND if limit == lossless else 0)  # head+tail: a quarter from the start
    tail = limit - limit // 4 + (CHARS_PER_TOKEN_BOUND if limit == lossless else 0)
    return text[:head] + " " + text[-tail:]


def encode_texts(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    truncation: str = "head",
    stride: int = 0,
    pairs: Sequence[str] | None = None,
    max_chars: int | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Input ids of each model input and the index of the text it came from (several per text with
    `chunk`, one otherwise). With `pairs`, each input is a text and its pair ([CLS] a [SEP] b [SEP] for
    BERT), the longer of the two cut first (params allow only head truncation for pairs)."""
    texts = [bounded(t, max_length, truncation, max_chars) for t in texts]
    if pairs is not None:
        pairs = [bounded(p, max_length, max_chars=max_chars) for p in pairs]
        return tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)["input_ids"], list(
            range(len(texts))
        )
    if truncation == "head":
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"], list(range(len(texts)))
    if truncation == "chunk":
        encoded = tokenizer(
            texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True
        )
        return encoded["input_ids"], list(encoded["overflow_to_sample_mapping"])
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    head = 0 if truncation == "tail" else budget // 4
    ids = []
    for body in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if len(body) > budget:
            body = body[:head] + body[len(body) - (budget - head) :]
        ids.append(prefix + body + suffix)
    return ids, list(range(len(texts)))


TITLE_MARKER, UPPER_MARKER = "§", "¶"  # one token each in BERT vocabularies, and absent from CoNLL-2003


def mark_case(sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """Token classification with `tokenize.mark_case`: each word in ALL CAPS (two letters or more) gets
    UPPER_MARKER appended, each other word that starts with a capital TITLE_MARKER. An uncased encoder
    lowercases its input, and with it the capitalisation NER leans on; the marker survives as an extra
    sub-token of the word (so the word's first sub-token, which carries its tag, is unchanged), and
    headlines in capitals are told apart from names."""

    def marked(word: str) -> str:
        if word.isupper() and sum(c.isalpha() for c in word) >= 2:
            return word + UPPER_MARKER
        return word + TITLE_MARKER if word[:1].isupper() else word

    return [[marked(word) for word in words] for words in sentences]


def in_context(
    sentences: Sequence[Sequence[str]],
    documents: Sequence[Any] | None,
    tokenizer: Any,
    max_length: int,
    case_markers: bool = False,
) -> list[tuple[list[str], int]]:
    """The words a token-classification model reads for each sentence, in training and prediction alike:
    with document context (`tokenize.context: document`), the sentence with the words of the sentences
    around it in the same document, as many as fit in `max_length` sub-tokens (half the room before, the
    rest after, whole words only); with `case_markers` (`tokenize.mark_case`), words marked by mark_case.
    Returns each sentence's words in context and the position of its first word; only the sentence's own
    words are labelled and predicted.

    Sentences of one document are consecutive in `sentences`; None for `documents` means each sentence
    stands alone. Context from neighbouring sentences lifts CoNLL-2003 entity F1 (Schweter & Akbik, 2020,
    "FLERT"); transformers and datasets have no helper for it, hence this function."""
    if case_markers:
        sentences = mark_case(sentences)
    if documents is None:
        return [(list(words), 0) for words in sentences]
    cache: dict[str, int] = {}

    def length(word: str) -> int:
        if word not in cache:
            cache[word] = len(tokenizer(word, add_special_tokens=False)["input_ids"])
        return cache[word]

    prefix, suffix = _special_tokens(tokenizer)
    out = []
    for index, words in enumerate(sentences):
        room = max(0, max_length - len(prefix) - len(suffix) - sum(length(w) for w in words))
        left: list[str] = []
        before, budget = index - 1, room // 2
        while before >= 0 and documents[before] == documents[index] and budget > 0:
            for word in reversed(sentences[before]):
                if length(word) > budget:
                    budget = 0
                    break
                left.insert(0, word)
                budget -= length(word)
            before -= 1
        right: list[str] = []
        after, budget = index + 1, room - sum(length(w) for w in left)
        while after < len(sentences) and documents[after] == documents[index] and budget > 0:
            for word in sentences[after]:
                if length(word) > budget:
                    budget = 0
                    break
                right.append(word)
                budget -= length(word)
            after += 1
        out.append((left + list(words) + right, len(left)))
    return out


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP] for BERT), read off
    one encoding: transformers 5 tokenizers no longer build inputs from ids."""
    full = tokenizer("a")["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(body)] == body)
    return full[:start], full[start + len(body) :]


def pool(window_logits: np.ndarray, text_index: Sequence[int], n_texts: int, how: str = "mean") -> np.ndarray:
    """One row of logits per text from the rows of its windows, by mean or max."""
    out = np.zeros((n_texts, window_logits.shape[-1]), dtype=np.float32)
    index = np.asarray(text_index)
    for text in range(n_texts):
        rows = window_logits[index == text]
        out[text] = rows.max(axis=0) if how == "max" else rows.mean(axis=0)
    return out
