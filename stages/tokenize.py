"""Stage 3: tokenize every split with the model's fast tokenizer.

Texts are truncated to `tokenize.max_length` but not padded: the collator pads each batch to its own
longest example, which is what makes short-text training fast. The task decides how examples and labels
are encoded (token tasks align word tags to sub-word tokens).
"""

from __future__ import annotations

from datasets import DatasetDict

from pipeline import data, paths
from pipeline.errors import atomic_dir, stage_main
from pipeline.modeling import load_tokenizer, require_fits_positions, resolve_model
from pipeline.params import load_params
from pipeline.tasks.registry import get_task


@stage_main
def main() -> None:
    params = load_params()
    task = get_task(params.task)
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
        }
        for name, split in splits.items()
    }
    with atomic_dir(paths.TOKENIZED) as out:
        splits.save_to_disk(str(out))
        data.write_json(stats, out / "stats.json")
    print("tokenize: " + ", ".join(f"{n} {s['examples']} ({s['truncated']} truncated)" for n, s in stats.items()))


if __name__ == "__main__":
    main()
