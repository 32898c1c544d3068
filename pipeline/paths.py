"""Where each stage reads and writes, relative to the repository root (mirrored by dvc.yaml)."""

from pathlib import Path

RAW = Path("data/raw")  # a user's own data: the ingest stage depends on this folder (dvc.yaml)
INGESTED = Path("data/ingested")  # data.parquet, card.json
SPLIT = Path("data/split")  # train/validation/test.parquet, labels.json, card.json
TOKENIZED = Path("data/tokenized")  # datasets.DatasetDict.save_to_disk
MODEL = Path("models/model")  # weights, tokenizer, label map, training.json
ONNX = Path("models/onnx")  # model.onnx, model.int8.onnx, export.json (the export stage)
CHECKPOINTS = Path("checkpoints")  # Trainer checkpoints, outside every stage's outs
TRAIN_LOGS = Path("reports/train")  # dvclive: metrics.json and plots/metrics/*.tsv
EVAL = Path("reports/eval")  # metrics.json, baseline.json, confusion.csv, registry.json
REPORT = Path("reports/report.md")
FIGURES = Path("reports/figures")  # PNGs the report shows
BENCHMARKS = Path("reports/benchmarks")  # results of benchmarks/compare_methods.py, committed; the report shows them

SPLITS = ("train", "validation", "test")
