"""Long documents: `tokenize.truncation` head vs tail vs head+tail vs chunk, on the default model.

The default data are single sentences, so long documents are built from them: each document joins
`--sentences` real review snippets (8: about 200 tokens): one clearly polar snippet (mean rating at least
2 in absolute value) at a random position among weak ones (|rating| < 1, either sign), and takes the
polar snippet's label. The evidence can sit anywhere, as the decisive sentence of a long review does, and
a `max_length` window (default 128) holds only part of the document. Train and test documents are built
from disjoint snippets (a seeded 70/30 cut).

Each variant fine-tunes the default model with the finetune params (but `--epochs`, `--batch-size`) through the stages'
own code (task encoding, Trainer set-up, Predictor with window pooling) and reports test accuracy and
training time, all in one run:

    python benchmarks/long_texts.py --train-docs 1500 --test-docs 400 --sentences 8
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import data  # noqa: E402
from stages.inference import Predictor  # noqa: E402
from stages.sources import resolve  # noqa: E402
from stages.modeling import load_for_training, load_tokenizer, resolve_model  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.tasks import get_task  # noqa: E402
from stages.training import build_trainer, training_arguments  # noqa: E402


def long_documents(snippets: pd.DataFrame, n: int, sentences: int, seed: int) -> pd.DataFrame:
    """Documents of `sentences` snippets: one clearly polar snippet (|rating| >= 2) at a random position
    among weak ones (|rating| < 1, either sign); the document takes the polar snippet's label."""
    rng = random.Random(seed)
    strong = snippets[snippets["rating"].abs() >= 2]
    weak = snippets[snippets["rating"].abs() < 1][data.TEXT].tolist()
    pools = {label: strong.loc[strong[data.LABEL] == label, data.TEXT].tolist() for label in ("negative", "positive")}
    rows = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        parts = rng.sample(weak, sentences - 1)
        parts.insert(rng.randrange(sentences), rng.choice(pools[label]))
        rows.append({data.TEXT: " ".join(parts), data.LABEL: label})
    return pd.DataFrame(rows)


def rated_snippets(params: Any) -> pd.DataFrame:
    """The default data with its mean ratings (the ingested table keeps only the sign)."""
    source = resolve(params.ingest.source, params.ingest.sha256, key="ingest.source")
    raw, _ = data.read_raw_table(source, params.ingest)
    rating = pd.to_numeric(raw[params.ingest.label_column])
    frame = pd.DataFrame({data.TEXT: raw[params.ingest.text_column].str.strip(), "rating": rating})
    frame = frame[rating != 0]
    return frame.assign(**{data.LABEL: np.where(frame["rating"] > 0, "positive", "negative")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-docs", type=int, default=1500)
    parser.add_argument("--test-docs", type=int, default=400)
    parser.add_argument("--sentences", type=int, default=8, help="snippets per document")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="small documents sets need more, smaller steps")
    parser.add_argument("--variants", default="head,chunk,head+tail,tail")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    params = load_params()
    snippets = rated_snippets(params).sample(frac=1.0, random_state=params.seed)
    cut = int(len(snippets) * 0.7)  # train and test documents from disjoint snippets
    labels = ["negative", "positive"]
    train = long_documents(snippets.iloc[:cut], args.train_docs, args.sentences, params.seed)
    test = long_documents(snippets.iloc[cut:], args.test_docs, args.sentences, params.seed + 1)
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
            finetune_params = params.finetune.model_copy(update={"num_train_epochs": args.epochs,
                                                                  "per_device_train_batch_size": args.batch_size})
            training_args = training_arguments(finetune_params, params.seed, Path(tmp) / "checkpoints", eval_strategy="no",
                                               save_strategy="no", load_best_model_at_end=False)
            trainer = build_trainer(model, tokenizer, params.task, labels, training_args, encoded, None)
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
            saved = Path(tmp) / "model"
            trainer.save_model(str(saved))
            poolings = ("mean", "max") if variant == "chunk" else ("-",)
            for pooling in poolings:  # one trained model, scored with each pooling
                data.write_json({"task": params.task, "labels": labels, "max_length": tokenize_params.max_length,
                                 "truncation": variant, "stride": tokenize_params.stride,
                                 "pooling": "mean" if pooling == "-" else pooling}, saved / "training.json")
                metrics, _ = task.score(Predictor(saved), test, "long test documents")
                results.append({"truncation": variant, "pooling": pooling, "training_inputs": len(encoded),
                                "train_seconds": round(seconds, 1), "accuracy": metrics["accuracy"],
                                "macro_f1": metrics["macro_f1"]})
                print(json.dumps(results[-1]), flush=True)

    print("\n| truncation | pooling | training inputs | train s | test accuracy | macro-F1 |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['truncation']} | {r['pooling']} | {r['training_inputs']} | {r['train_seconds']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    head = next((r for r in results if r["truncation"] == "head"), None)
    for chunk in (r for r in results if r["truncation"] == "chunk"):
        if head:
            print(f"chunk ({chunk['pooling']}) - head: {chunk['accuracy'] - head['accuracy']:+.4f} accuracy")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
