"""Stage 3: tokenize every split with the model's fast tokenizer.

Texts are truncated to `tokenize.max_length` but not padded: the collator pads each batch to its own
longest example, which is what makes short-text training fast. The task decides how examples and labels
are encoded (token tasks align word tags to sub-word tokens).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict

from pipeline import data, paths
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.params import load_params
from pipeline.tasks.encoding import ENCODERS
from pipeline.training.modeling import load_tokenizer, require_fits_positions, resolve_model


def unreadable(tokenizer: Any, split: Dataset) -> dict[str, Any]:
    """What of a split the model cannot read: the share of its text tokens that are the unknown token, the
    inputs with no text token at all, and the input with the largest unknown share (for the message)."""
    unk = tokenizer.unk_token_id
    # Some decoders name their end-of-text token as the unknown one (SmolLM2): it ends every answer, and
    # a byte-level vocabulary has no unknown text, so nothing is counted there.
    structural = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id}
    if unk in structural:
        unk = None
    special = set(tokenizer.all_special_ids) - {unk}
    tokens = unknown = empty = 0
    worst, worst_share = None, 0.0
    for index, ids in enumerate(split["input_ids"]):
        text_ids = [i for i in ids if i not in special]
        unknown_here = sum(i == unk for i in text_ids) if unk is not None else 0
        tokens, unknown, empty = tokens + len(text_ids), unknown + unknown_here, empty + (not text_ids)
        share = unknown_here / len(text_ids) if text_ids else 1.0
        if share > worst_share:
            worst, worst_share = index, share
    return {
        "unknown_token_share": round(unknown / tokens, 4) if tokens else 0.0,
        "inputs_without_tokens": empty,
        "least_readable_input": worst,
    }


def cut_to_max_chars(table: Any, max_chars: int | None) -> int:
    """How many texts (each text of a pair counts) are longer than tokenize.max_chars, so were cut."""
    if max_chars is None:
        return 0
    columns = [column for column in (data.TEXT, data.TEXT_PAIR) if column in table.columns]
    return int(sum((table[column].str.len() > max_chars).sum() for column in columns))


def require_readable(stats: dict, tables: dict, source: str, max_share: float | None) -> None:
    """Stop where a split's unknown-token share, or its share of inputs without a token, is above
    `tokenize.max_unknown_share`, naming the model, the share and an example text."""
    if max_share is None:
        return
    for name, split in stats.items():
        empty_share = split["inputs_without_tokens"] / max(split["examples"], 1)
        if split["unknown_token_share"] <= max_share and empty_share <= max_share:
            continue
        texts = data.raw_texts(tables[name])
        index = split["least_readable_input"]
        # an input is a text, except in chunk mode (several windows per text): then no example is named
        example = f", e.g. {texts[index][:60]!r}" if index is not None and len(texts) == split["examples"] else ""
        what = (
            f"{split['unknown_token_share']:.0%} of the {name} tokens are its unknown token"
            if split["unknown_token_share"] > max_share
            else f"{empty_share:.0%} of the {name} inputs have no token"
        )
        raise PipelineError(
            f"tokenize: {what} (tokenize.max_unknown_share {max_share}): model.source {source} cannot read this "
            f"data{example}; use a model whose vocabulary covers it, or set tokenize.max_unknown_share: null"
        )


@stage_main
def main() -> None:
    params = load_params()
    task = ENCODERS.for_task(params.task)
    model_dir = resolve_model(params.model)
    task.check_model(data.read_json(model_dir / "config.json"), params.model.source)
    require_fits_positions(model_dir, params.tokenize.max_length)
    tokenizer = load_tokenizer(model_dir)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    max_length = params.tokenize.max_length
    tables = {name: data.read_table(paths.SPLIT / f"{name}.parquet") for name in paths.SPLITS}
    splits = DatasetDict({name: task.encode(tables[name], labels, tokenizer, params.tokenize) for name in paths.SPLITS})
    stats = {
        name: {
            "examples": len(split),
            "truncated": task.truncated(split, tables[name], max_length),
            "mean_tokens": round(sum(split["length"]) / max(len(split), 1), 2),
            **unreadable(tokenizer, split),
            "cut_to_max_chars": cut_to_max_chars(tables[name], params.tokenize.max_chars),
        }
        for name, split in splits.items()
    }
    require_readable(stats, tables, params.model.source, params.tokenize.max_unknown_share)
    with atomic_dir(paths.TOKENIZED) as out:
        splits.save_to_disk(str(out))
        data.write_json(stats, out / "stats.json")
    print(
        "tokenize: "
        + ", ".join(
            f"{n} {s['examples']} ({s['truncated']} truncated, {s['unknown_token_share']:.1%} unknown tokens)"
            for n, s in stats.items()
        )
    )


if __name__ == "__main__":
    main()
