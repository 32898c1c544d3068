"""Long documents: `tokenize.truncation` head vs tail vs head+tail vs chunk, on the default model.

The default data are single sentences, so long documents are built from them: each document joins
`--sentences` real review snippets (default 12, about 300 tokens) of which a majority (7 of 12) share the
document's label and the rest have the other one, shuffled. A document's label is thus spread over its
whole length, as in a long review, and a `max_length` window (default 128) sees only part of it. Train and
test documents are built from disjoint snippets (the pipeline's train and test splits).

Each variant fine-tunes the default model with the finetune params (but `--epochs`) through the stages'
own code (task encoding, Trainer set-up, Predictor with window pooling) and reports test accuracy and
training time, all in one run:

    python benchmarks/long_texts.py --train-docs 600 --test-docs 400
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import data  # noqa: E402
from stages.inference import Predictor  # noqa: E402
from stages.ingest import ingest  # noqa: E402
from stages.modeling import load_for_training, load_tokenizer, resolve_model  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.split import stratified_split  # noqa: E402
from stages.tasks import get_task  # noqa: E402
from stages.training import build_trainer, training_arguments  # noqa: E402


def long_documents(snippets: pd.DataFrame, labels: list[str], n: int, sentences: int, seed: int) -> pd.DataFrame:
    """Documents of `sentences` snippets, a majority with the document's label; balanced labels."""
    rng = random.Random(seed)
    pools = {label: snippets.loc[snippets[data.LABEL].astype(str) == label, data.TEXT].tolist() for label in labels}
    majority = sentences // 2 + 1
    rows = []
    for i in range(n):
        label, other = labels[i % 2], labels[1 - i % 2]
        parts = rng.sample(pools[label], majority) + rng.sample(pools[other], sentences - majority)
        rng.shuffle(parts)
        rows.append({data.TEXT: " ".join(parts), data.LABEL: label})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-docs", type=int, default=600)
    parser.add_argument("--test-docs", type=int, default=400)
    parser.add_argument("--sentences", type=int, default=12, help="snippets per document")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--variants", default="head,tail,head+tail,chunk")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    params = load_params()
    table, labels, _ = ingest(params.ingest, params.task)
    parts = stratified_split(table, params.split, params.seed)
    train = long_documents(parts["train"], labels, args.train_docs, args.sentences, params.seed)
    test = long_documents(parts["test"], labels, args.test_docs, args.sentences, params.seed + 1)
    model_dir = resolve_model(params.model)
    tokenizer = load_tokenizer(model_dir)
    task = get_task(params.task)
    doc_tokens = [len(ids) for ids in tokenizer(test[data.TEXT].tolist())["input_ids"]]
    print(f"documents: {len(train)} train, {len(test)} test; tokens per test document: mean {np.mean(doc_tokens):.0f}, "
          f"max {max(doc_tokens)}; window {params.tokenize.max_length} tokens")

    results = []
    for variant in args.variants.split(","):
        tokenize_params = params.tokenize.model_copy(update={"truncation": variant, "stride": params.tokenize.max_length // 4})
        encoded = task.encode(train, labels, tokenizer, tokenize_params)
        set_seed(params.seed)
        model = load_for_training(model_dir, params.task, labels)
        with tempfile.TemporaryDirectory() as tmp:
            finetune_params = params.finetune.model_copy(update={"num_train_epochs": args.epochs})
            training_args = training_arguments(finetune_params, params.seed, Path(tmp) / "checkpoints", eval_strategy="no",
                                               save_strategy="no", load_best_model_at_end=False)
            trainer = build_trainer(model, tokenizer, params.task, labels, training_args, encoded, None)
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
            saved = Path(tmp) / "model"
            trainer.save_model(str(saved))
            data.write_json({"task": params.task, "labels": labels, "max_length": tokenize_params.max_length,
                             "truncation": variant, "stride": tokenize_params.stride, "pooling": tokenize_params.pooling},
                            saved / "training.json")
            metrics, _ = task.score(Predictor(saved), test, "long test documents")
        results.append({"truncation": variant, "training_inputs": len(encoded), "train_seconds": round(seconds, 1),
                        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
        print(json.dumps(results[-1]), flush=True)

    print("\n| truncation | training inputs | train s | test accuracy | macro-F1 |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['truncation']} | {r['training_inputs']} | {r['train_seconds']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    head = next((r for r in results if r["truncation"] == "head"), None)
    chunk = next((r for r in results if r["truncation"] == "chunk"), None)
    if head and chunk:
        print(f"\nchunk - head: {chunk['accuracy'] - head['accuracy']:+.4f} accuracy")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
