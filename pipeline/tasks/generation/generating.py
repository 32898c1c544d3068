"""What a decoder language model says after a prompt: greedy or sampled generation with the KV cache, and
the label words' scores read off the same forward pass. Used by prediction (the Predictor, serving) and by
the prompting baselines (evaluate).

transformers has padding and `generate`; what it does not have, and is written here: reading label words'
scores off the pass a generation starts with, and left-padded batches whose positions start at each row's
first real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.tasks.generation.prompting import end_of_turn

MAX_NEW_TOKENS = 1024  # the most a request may ask for, as tokenize.prompt.max_new_tokens' bound


@dataclass(frozen=True)
class Sampling:
    """How a free generation picks its tokens: greedy by default (temperature 0: evaluate's scores are
    reproducible), or sampled at `temperature` from the `top_p` nucleus and the `top_k` likeliest tokens
    (0: all), seeded by `seed` so the same request gives the same text; at most `max_new_tokens` new
    tokens (0: the model's own). Chosen per request (serving's params, `pipeline-predict --temperature
    ...`), never at training."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_new_tokens: int = 0  # 0: the model's own, tokenize.prompt.max_new_tokens as trained

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise ValueError(f"temperature: a number from 0 (greedy) to 100 (got {self.temperature!r})")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p: a share above 0 and at most 1 (got {self.top_p!r})")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k: a count of tokens, 0 for all (got {self.top_k!r})")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed: a non-negative integer (got {self.seed!r})")
        if not (isinstance(self.max_new_tokens, int) and 0 <= self.max_new_tokens <= MAX_NEW_TOKENS):
            raise ValueError(
                f"max_new_tokens: a count of tokens up to {MAX_NEW_TOKENS}, 0 for the model's own "
                f"(got {self.max_new_tokens!r})"
            )

    def new_tokens(self, trained: int) -> int:
        """How many tokens a generation may add: this request's `max_new_tokens`, or the model's own."""
        return self.max_new_tokens or trained

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
