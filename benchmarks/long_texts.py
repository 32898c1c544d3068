"""Long documents: `tokenize.truncation` head vs tail vs head+tail vs chunk, on the default model.

The default data are single sentences, so long documents are built from them: each document joins
`--sentences` real review snippets: one clearly polar snippet (mean rating at least 2 in absolute value)
at a random position among weak ones (|rating| < 1, either sign), and takes the polar snippet's label,
as the decisive sentence of a long review can sit anywhere in it. Train and test documents are built from
disjoint snippets (a seeded 70/30 cut).

The window (`--max-length`, 64 tokens) is a third of a document (8 snippets, about 200 tokens), so most
of the evidence lies outside a head window; the same holds for 128-token windows on 400-token documents
at four times the CPU cost. Every variant trains the same number of optimizer steps (`--steps`, batch
`--batch-size`) through the stages' own code (task encoding, Trainer set-up, Predictor with window
pooling), so chunk does not win by training longer. Accuracy is also split by where the decisive
snippet starts: inside the first window or beyond it, which shows why a variant wins.

    python -m benchmarks.long_texts                                  # head vs chunk, about 20 min on 2 CPU cores
    python -m benchmarks.long_texts --variants head,tail,head+tail,chunk

Results go to reports/benchmarks/long_texts.json, which the report stage renders.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import set_seed

from benchmarks.results import load_average, write_results
from pipeline import data
from pipeline.card import EncodingSpec, ModelCard
from pipeline.data.sources import resolve
from pipeline.evaluation.assessment import score
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.tasks.encoding import ENCODERS
from pipeline.tasks.training import HOOKS
from pipeline.training.modeling import load_for_training, load_tokenizer, resolve_model
from pipeline.training.trainer import build_trainer, training_arguments

EVIDENCE_START = "evidence_start"  # characters before the decisive snippet


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
        position = rng.randrange(sentences)
        before = " ".join(parts[:position])
        parts.insert(position, rng.choice(pools[label]))
        rows.append({data.TEXT: " ".join(parts), data.LABEL: label, EVIDENCE_START: len(before) + (position > 0)})
    return pd.DataFrame(rows)


def rated_snippets(params: Any) -> pd.DataFrame:
    """The default data with its mean ratings (the ingested table keeps only the sign)."""
    source = resolve(params.ingest.source, params.ingest.sha256, key="ingest.source")
    raw, _ = data.read_raw_table(source, params.ingest)
    rating = pd.to_numeric(raw[params.ingest.label_column])
    frame = pd.DataFrame({data.TEXT: raw[params.ingest.text_column].str.strip(), "rating": rating})
    frame = frame[rating != 0]
    return frame.assign(**{data.LABEL: np.where(frame["rating"] > 0, "positive", "negative")})


def evidence_in_first_window(documents: pd.DataFrame, tokenizer: Any, max_length: int) -> np.ndarray:
    """Whether the decisive snippet starts inside the first window ([CLS] + max_length - 2 tokens + [SEP])."""
    prefixes = [text[:start] for text, start in zip(documents[data.TEXT], documents[EVIDENCE_START])]
    tokens_before = [len(ids) for ids in tokenizer(prefixes, add_special_tokens=False)["input_ids"]]
    return np.array(tokens_before) < max_length - 2


def interval(correct: np.ndarray) -> float:
    """Half-width of the 95 % normal interval of an accuracy over len(correct) documents."""
    p = correct.mean()
    return 1.96 * math.sqrt(p * (1 - p) / len(correct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-docs", type=int, default=2000)
    parser.add_argument("--test-docs", type=int, default=1000)
    parser.add_argument("--sentences", type=int, default=8, help="snippets per document")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per window (tokenize.max_length)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps, the same for every variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-5,
        help="below the default 1e-4: at 1e-4 head truncation's noisy labels (most windows hold no "
        "evidence) collapse the model to a constant prediction",
    )
    parser.add_argument("--variants", default="head,chunk", help="any of head, tail, head+tail, chunk")
    parser.add_argument(
        "--no-save", action="store_true", help="print only; do not write reports/benchmarks/long_texts.json"
    )
    args = parser.parse_args()
    started = time.perf_counter()

    params = load_params()
    snippets = rated_snippets(params).sample(frac=1.0, random_state=params.seed)
    cut = int(len(snippets) * 0.7)  # train and test documents from disjoint snippets
    labels = ["negative", "positive"]
    train = long_documents(snippets.iloc[:cut], args.train_docs, args.sentences, params.seed)
    test = long_documents(snippets.iloc[cut:], args.test_docs, args.sentences, params.seed + 1)
    model_dir = resolve_model(params.model)
    tokenizer = load_tokenizer(model_dir)
    doc_tokens = [len(ids) for ids in tokenizer(test[data.TEXT].tolist())["input_ids"]]
    in_first = evidence_in_first_window(test, tokenizer, args.max_length)
    print(
        f"documents: {len(train)} train, {len(test)} test; tokens per test document: mean {np.mean(doc_tokens):.0f}, "
        f"max {max(doc_tokens)}; window {args.max_length} tokens; decisive snippet starts in the first window "
        f"in {in_first.mean():.1%} of test documents",
        flush=True,
    )

    rows = []
    for variant in args.variants.split(","):
        tokenize_params = params.tokenize.model_copy(
            update={"max_length": args.max_length, "truncation": variant, "stride": args.max_length // 4}
        )
        encoded = ENCODERS.for_task(params.task).encode(train, labels, tokenizer, tokenize_params)
        set_seed(params.seed)
        model = load_for_training(model_dir, HOOKS.for_task(params.task), labels)
        with tempfile.TemporaryDirectory() as tmp:
            finetune_params = params.finetune.model_copy(
                update={
                    "max_steps": args.steps,
                    "learning_rate": args.learning_rate,
                    "per_device_train_batch_size": args.batch_size,
                }
            )
            training_args = training_arguments(
                finetune_params,
                params.seed,
                Path(tmp) / "checkpoints",
                eval_strategy="no",
                save_strategy="no",
                load_best_model_at_end=False,
            )
            trainer = build_trainer(model, tokenizer, HOOKS.for_task(params.task), labels, training_args, encoded, None)
            train_started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - train_started
            saved = Path(tmp) / "model"
            trainer.save_model(str(saved))
            encoding = EncodingSpec(**tokenize_params.model_dump(exclude={"prompt", "max_unknown_share"}))
            ModelCard(task=params.task, labels=labels, encoding=encoding).write(saved)
            predictor = Predictor(saved)  # loaded once; the pooling only changes how window logits are combined
            for pooling in ("mean", "max") if variant == "chunk" else ("-",):
                predictor.encoding = predictor.encoding.model_copy(
                    update={"pooling": "mean" if pooling == "-" else pooling}
                )
                metrics, pairs = score(predictor, test, "long test documents")
                correct = (pairs["actual"] == pairs["predicted"]).to_numpy()
                rows.append(
                    {
                        "truncation": variant,
                        "pooling": pooling,
                        "training_inputs": len(encoded),
                        "epochs": round(args.steps * args.batch_size / len(encoded), 2),
                        "train_seconds": round(seconds, 1),
                        "accuracy": metrics["accuracy"],
                        "accuracy_ci95": round(interval(correct), 4),
                        "macro_f1": metrics["macro_f1"],
                        "accuracy_evidence_in_first_window": float(correct[in_first].mean()),
                        "accuracy_evidence_beyond": float(correct[~in_first].mean()),
                        "load_average_1m": load_average(),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

    print(
        "\n| truncation | pooling | training inputs | epochs | train s | test accuracy | evidence in first window | "
        "beyond |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['truncation']} | {r['pooling']} | {r['training_inputs']} | {r['epochs']} | {r['train_seconds']} | "
            f"{r['accuracy']:.4f} ± {r['accuracy_ci95']:.3f} | {r['accuracy_evidence_in_first_window']:.4f} | "
            f"{r['accuracy_evidence_beyond']:.4f} |"
        )
    head = next((r for r in rows if r["truncation"] == "head"), None)
    for chunk in (r for r in rows if r["truncation"] == "chunk" and head):
        print(f"chunk ({chunk['pooling']}) - head: {chunk['accuracy'] - head['accuracy']:+.4f} accuracy")
    if not args.no_save:
        command = "python -m benchmarks.long_texts " + " ".join(sys.argv[1:])
        setup = {
            "train_documents": len(train),
            "test_documents": len(test),
            "snippets_per_document": args.sentences,
            "mean_test_tokens": round(float(np.mean(doc_tokens))),
            "window_tokens": args.max_length,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "share_evidence_in_first_window": round(float(in_first.mean()), 4),
        }
        print(f"written: {write_results('long_texts', command.strip(), rows, started, setup=setup)}")


if __name__ == "__main__":
    main()
