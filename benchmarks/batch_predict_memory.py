"""Batch prediction memory: peak RSS of `python -m pipeline.serving.predict` on inputs 1x and 10x as large.

`pipeline.serving.predict` reads, predicts and writes `--chunk-size` rows at a time, so its peak memory should not
grow with the input. This builds a small random BERT (the model's size does not matter for the question)
and Parquet files of N and 10*N short texts, runs the command on each in a fresh process, and prints each
run's peak RSS and rows/s and the ratio of the two peaks, from one run:

    python -m benchmarks.batch_predict_memory --rows 20000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.card import EncodingSpec, ModelCard
from pipeline.tasks.classification.spec import SingleLabelSpec

REPO = Path(__file__).resolve().parents[1]

WORDS = "the a film movie story plot cast is was great dull moving awful very quite really but and".split()


def tiny_model(folder: Path) -> Path:
    """A 2-layer BERT classifier with random weights, saved as a fine-tuned model folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    ModelCard(task=SingleLabelSpec.name, labels=["negative", "positive"], encoding=EncodingSpec(max_length=64)).write(
        folder
    )
    return folder


def texts(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {"id": range(n), "text": [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(n)]}
    )


def run(model: Path, source: Path, target: Path, chunk_size: int) -> dict:
    """One prediction in a child process: its peak RSS (getrusage's ru_maxrss, KiB on Linux) and its speed."""
    script = (
        "import resource, sys; from pipeline import predict; predict.run(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--model",
            str(model),
            "--input",
            str(source),
            "--output",
            str(target),
            "--chunk-size",
            str(chunk_size),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    peak_kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")))
    rows = len(pd.read_parquet(target, columns=["id"]))
    return {
        "input": source.name,
        "rows": rows,
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "rows_per_s": round(rows / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of the smaller input (the larger has 10x)")
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = tiny_model(folder / "model")
        results = []
        for factor in (1, 10):
            source = folder / f"texts_{factor}x.parquet"
            texts(args.rows * factor, seed=factor).to_parquet(source, index=False)
            results.append(run(model, source, folder / f"out_{factor}x.parquet", args.chunk_size))
            print(json.dumps(results[-1]), flush=True)
    small, large = results
    print(
        f"\n10x the rows ({small['rows']} -> {large['rows']}): peak RSS {small['peak_rss_mib']} -> "
        f"{large['peak_rss_mib']} MiB, ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
