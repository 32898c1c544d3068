"""Long texts: head, tail, head+tail truncation and chunking into overlapping windows whose logits are
pooled per document, the same way in training and in prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from builders import write_sentiment_tsv
from helpers import assert_onnx_matches_pytorch, benchmark_module, raw_data, set_params
from pipeline import data, paths
from pipeline.data.encoding import encode_texts, pool
from pipeline.errors import PipelineError
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from stages import evaluate, export, finetune, ingest, split, tokenize

WORDS = "the film is a great and moving story but the plot was very dull and the cast quite awful".split()


@pytest.fixture
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def body(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_head_tail_and_head_plus_tail_keep_the_promised_ends(tokenizer) -> None:
    text = " ".join(WORDS)
    ids = body(tokenizer, text)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    (head,), _ = encode_texts(tokenizer, [text], 10, "head")
    (tail,), _ = encode_texts(tokenizer, [text], 10, "tail")
    (both,), _ = encode_texts(tokenizer, [text], 10, "head+tail")
    assert head == [cls, *ids[:8], sep]
    assert tail == [cls, *ids[-8:], sep]
    assert both == [cls, *ids[:2], *ids[-6:], sep]  # a quarter of the 8-token budget from the start
    short, _ = encode_texts(tokenizer, ["great film"], 10, "head+tail")
    assert short == [[cls, *body(tokenizer, "great film"), sep]]  # short texts are untouched


def test_chunks_cover_every_token_with_the_stride_as_overlap(tokenizer) -> None:
    texts = [" ".join(WORDS), "great film"]
    ids, source = encode_texts(tokenizer, texts, 10, "chunk", stride=2)
    assert source[-1] == 1 and source.count(0) == len(ids) - 1 > 1
    windows = [window[1:-1] for window, s in zip(ids, source) if s == 0]
    assert all(len(w) <= 8 for w in windows)
    rebuilt = windows[0] + [t for w in windows[1:] for t in w[2:]]  # drop the 2 overlapping tokens
    assert rebuilt == body(tokenizer, texts[0])


def test_pooling_by_mean_or_max() -> None:
    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.5, 0.5]])
    assert pool(logits, [0, 0, 1], 2, "mean").tolist() == [[2.0, -1.0], [0.5, 0.5]]
    assert pool(logits, [0, 0, 1], 2, "max").tolist() == [[3.0, 0.0], [0.5, 0.5]]


def test_chunked_training_and_prediction_score_documents_not_windows(project: Path, tmp_path: Path) -> None:
    long_rows = [
        (900 + i, 2.0 if i % 2 else -2.0, " ".join(WORDS * 3) + (" great" if i % 2 else " dull")) for i in range(10)
    ]
    source = write_sentiment_tsv(tmp_path / "long.tsv", n=100, extra=long_rows)
    set_params(
        project,
        {
            "ingest.source": raw_data(project, source),
            "tokenize.max_length": 16,
            "tokenize.truncation": "chunk",
            "tokenize.stride": 4,
            "tokenize.pooling": "max",
        },
    )
    for stage in (ingest, split, tokenize):
        stage.main()
    train = pd.read_parquet(paths.SPLIT / "train.parquet")
    windows = data.load_tokenized(paths.TOKENIZED)["train"]
    assert len(windows) > len(train) and max(windows["length"]) <= 16
    finetune.main()
    export.main()
    evaluate.main()
    assert_onnx_matches_pytorch()  # ONNX Runtime fp32 and int8 decide as PyTorch does
    test = pd.read_parquet(paths.SPLIT / "test.parquet")
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert sum(c["support"] for c in metrics["per_class"].values()) == len(test)  # one prediction per document
    predictor = Predictor(paths.MODEL)
    assert (predictor.encoding.truncation, predictor.encoding.stride, predictor.encoding.pooling) == ("chunk", 4, "max")
    texts = test["text"].tolist()
    encoded, source_of = encode_texts(predictor.tokenizer, texts, 16, "chunk", 4)
    windows_logits = np.stack(predictor.forward(encoded))
    np.testing.assert_allclose(predictor.logits(texts), pool(windows_logits, source_of, len(texts), "max"), rtol=1e-6)


def test_long_text_params_are_checked(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"tokenize: stride must be below max_length / 2"):
        load_params(overrides={"tokenize.truncation": "chunk", "tokenize.stride": 64})
    with pytest.raises(
        PipelineError, match=r"tokenize.truncation: Input should be 'head', 'tail', 'head\+tail' or 'chunk'"
    ):
        load_params(overrides={"tokenize.truncation": "middle"})


def _long_text_benchmark():
    return benchmark_module("long_texts"), benchmark_module("results")


def test_long_document_benchmark_knows_where_the_evidence_starts_and_the_benchmarks_page_shows_it(
    tokenizer, tmp_path: Path
) -> None:
    long_texts, results = _long_text_benchmark()
    snippets = pd.DataFrame(
        {
            data.TEXT: [" ".join(WORDS[i : i + 5]) for i in range(12)],
            "rating": [2.5, -3.0, 0.5, -0.5, 0.2, -0.2, 0.9, -0.9, 0.1, 0.3, 2.0, -2.2],
        }
    )
    snippets[data.LABEL] = np.where(snippets["rating"] > 0, "positive", "negative")
    documents = long_texts.long_documents(snippets, n=20, sentences=4, seed=0)
    strong = set(snippets.loc[snippets["rating"].abs() >= 2, data.TEXT])
    for text, label, start in zip(documents[data.TEXT], documents[data.LABEL], documents[long_texts.EVIDENCE_START]):
        decisive = next(s for s in strong if text[start:].startswith(s))  # the polar snippet begins at evidence_start
        assert snippets.set_index(data.TEXT).loc[decisive, data.LABEL] == label
    assert set(documents[data.LABEL]) == {"positive", "negative"}

    in_first = long_texts.evidence_in_first_window(documents, tokenizer, max_length=12)
    for text, start, inside in zip(documents[data.TEXT], documents[long_texts.EVIDENCE_START], in_first):
        assert inside == (len(tokenizer.tokenize(text[:start])) < 10)
    assert 0 < in_first.sum() < len(documents)  # both kinds occur at this window size

    row = {
        "truncation": "chunk",
        "pooling": "mean",
        "training_inputs": 812,
        "epochs": 1.2,
        "train_seconds": 90.0,
        "accuracy": 0.81,
        "accuracy_ci95": 0.024,
        "macro_f1": 0.8,
        "accuracy_evidence_in_first_window": 0.83,
        "accuracy_evidence_beyond": 0.79,
        "load_average_1m": 2.0,
    }
    setup = {
        "train_documents": 200,
        "test_documents": 100,
        "snippets_per_document": 4,
        "mean_test_tokens": 21,
        "window_tokens": 12,
        "steps": 60,
        "batch_size": 16,
        "share_evidence_in_first_window": 0.55,
    }
    folder = tmp_path / "benchmarks"
    results.write_results("long_texts", "python benchmarks/long_texts.py", [row], 0.0, out=folder, setup=setup)
    page = benchmark_module("docs_page").render(folder)
    assert "## long_texts" in page
    assert "| chunk | mean | 812 | 1.2000 | 90 | 0.8100 | 0.0240 | 0.8000 | 0.8300 | 0.7900 | 2 |" in page
