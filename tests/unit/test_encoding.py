"""pipeline.data.encoding: a huge text is cut before it is tokenized, and that never changes the tokens kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from pipeline.data import encoding
from pipeline.data.encoding import encode_texts
from pipeline.tasks.generation import prompting

HUGE = "great film " * 100_000 + "dull ending " * 100_000  # 2.3 million characters


class Recording:
    """A tokenizer that remembers the longest text it was asked to tokenize."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        for text in [texts] if isinstance(texts, str) else texts:
            self.longest = max(self.longest, len(text))
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("truncation", ["head", "tail", "head+tail"])
def test_a_huge_text_is_cut_before_tokenizing_to_the_same_tokens(
    tiny_model: Path, truncation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = Recording(AutoTokenizer.from_pretrained(tiny_model))
    ids, _ = encode_texts(tokenizer, [HUGE, "a short one"], 32, truncation)
    assert tokenizer.longest <= (32 + 3) * encoding.CHARS_PER_TOKEN_BOUND  # head+tail: some slack at both ends
    monkeypatch.setattr(encoding, "CHARS_PER_TOKEN_BOUND", 10**9)  # no cut: the whole text tokenized
    whole, _ = encode_texts(AutoTokenizer.from_pretrained(tiny_model), [HUGE, "a short one"], 32, truncation)
    assert ids == whole


def test_a_huge_text_in_a_prompt_is_cut_before_tokenizing_to_the_same_tokens(tiny_model: Path) -> None:
    tokenizer = Recording(AutoTokenizer.from_pretrained(tiny_model))
    texts, cut = prompting.cut_texts(tokenizer, [HUGE], 20)
    assert cut == [True] and tokenizer.longest <= 20 * encoding.CHARS_PER_TOKEN_BOUND
    assert texts[0] == tokenizer.decode(tokenizer(HUGE[:5000], add_special_tokens=False)["input_ids"][:20])


@pytest.mark.parametrize(("truncation", "kept"), [("head", "start"), ("chunk", "start"), ("tail", "end")])
def test_tokenize_max_chars_cuts_each_text_on_the_kept_side_before_tokenizing(
    tiny_model: Path, truncation: str, kept: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "great film " * 50 + "dull ending " * 50  # 1,150 characters
    ids, source = encode_texts(tokenizer, [text], 16, truncation, max_chars=100)
    piece = text[:100] if kept == "start" else text[-100:]
    expected, expected_source = encode_texts(tokenizer, [piece], 16, truncation)
    assert (ids, source) == (expected, expected_source)
    if truncation == "chunk":  # the windows of 100 characters, not of the whole text
        assert len(ids) < len(encode_texts(tokenizer, [text], 16, "chunk")[0])


def test_tokenize_max_chars_cuts_each_text_of_a_pair(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first, second = "great " * 100, "dull " * 100
    ids, _ = encode_texts(tokenizer, [first], 64, pairs=[second], max_chars=30)
    assert ids == encode_texts(tokenizer, [first[:30]], 64, pairs=[second[:30]])[0]
