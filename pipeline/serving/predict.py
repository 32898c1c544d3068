"""Batch prediction: a file of texts in, the same rows with predictions and scores out.

    pipeline-predict --model models:/sentiment-classifier@champion --input texts.csv --output predictions.parquet
    pipeline-predict --model models/model --input texts.jsonl --output predictions.jsonl --text-column review
    pipeline-predict --model models:/sentiment-classifier@champion --runtime onnx-int8 --input texts.csv --output p.csv

(`python -m pipeline.serving.predict ...` is the same command.)

Input and output may be CSV, TSV, JSON Lines or Parquet (by extension). The input is read and written in
chunks of `--chunk-size` rows, so memory stays flat however large the file; within a chunk, texts are
sorted by length and padded per batch (dynamic padding), as in training. The output appears only when
every row was predicted: a bad row stops the command with its number and leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import transformers
from tqdm import tqdm

from pipeline.data import is_empty_text, json_record, require_columns
from pipeline.data.tables import write_csv
from pipeline.errors import PipelineError, atomic_file, stage_main
from pipeline.prediction.inference import Predictor, load_predictor
from pipeline.prediction.runtimes import RUNTIMES
from pipeline.tasks.generation.generating import Sampling

PREFIX = "predicted_"  # predicted_label, predicted_score, predicted_score_<label>: never clash with input columns
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise PipelineError(f"{path}: unknown file type '{path.suffix}' (use {', '.join(FORMATS)})") from None


def read_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """The input file as DataFrames of at most `chunk_size` rows, never all of it at once."""
    kind = file_format(path)
    if not path.is_file():
        raise PipelineError(f"{path}: input file not found")
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
                yield batch.to_pandas()
        elif kind == "jsonl":
            yield from _jsonl_chunks(path, chunk_size)
        else:
            with warnings.catch_warnings():
                # A row with more fields than the header would otherwise lose its tail with only a warning.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                yield from pd.read_csv(
                    path,
                    sep="\t" if kind == "tsv" else ",",
                    chunksize=chunk_size,
                    index_col=False,
                    dtype=str,
                    keep_default_na=False,
                    encoding_errors="strict",
                )
    except pd.errors.ParserWarning:
        raise PipelineError(
            f"{path}: a row has more fields than the header (quote texts that contain the separator)"
        ) from None
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"{path}: line {_first_undecodable_line(path)}: bytes do not decode as utf-8 ({exc.reason})"
        ) from None
    except (ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise PipelineError(f"{path}: cannot read as {kind}: {str(exc).strip().splitlines()[-1]}") from None


def _jsonl_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """JSON Lines read line by line, so a bad line is named by its number (pandas names a byte position)."""
    records: list[dict] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PipelineError(f"{path}: line {number}: bytes do not decode as utf-8 ({exc.reason})") from None
            if not line.strip():
                continue
            records.append(json_record(line, path, number))
            if len(records) == chunk_size:
                yield pd.DataFrame.from_records(records)
                records = []
    if records:
        yield pd.DataFrame.from_records(records)


def _first_undecodable_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8, read in blocks (the file may be larger than memory)."""
    import codecs

    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            for raw in block.splitlines(keepends=True):
                try:
                    decoder.decode(raw)
                except UnicodeDecodeError:
                    return line
                line += raw.endswith(b"\n")
    return line


def _parquet_rows(path: Path) -> int | None:
    """Rows of a Parquet input (for the progress bar); None when it is not one (read_chunks says why)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


class ChunkWriter:
    """Appends DataFrames to a CSV, TSV, JSON Lines or Parquet file."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.parquet: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        elif self.kind == "jsonl":
            with self.path.open("a", encoding="utf-8") as fh:
                for record in frame.to_dict(orient="records"):
                    fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        else:
            write_csv(frame, self.path, sep="\t" if self.kind == "tsv" else ",", append=True)
        self.rows += len(frame)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


def refuse_prediction_columns(chunk: pd.DataFrame, source: Path) -> None:
    """An input that already has predicted_* columns (an earlier output, read back) would get a second set:
    JSON Lines would keep one of each pair, Parquet cannot hold both. Refused, naming them."""
    clashing = [str(column) for column in chunk.columns if str(column).startswith(PREFIX)]
    if clashing:
        raise PipelineError(
            f"{source}: the input already has prediction columns ({', '.join(clashing)}): predict from the "
            f"original file, or rename or drop them"
        )


def predict_file(
    predictor: Predictor, source: Path, target: Path, text_column: str, chunk_size: int, pair_column: str | None = None
) -> int:
    """Predict every row of `source` into `target`; returns the number of rows. A pair model reads its
    second text from `pair_column`."""
    kind = file_format(target)
    if target.exists() and source.exists() and target.samefile(source):  # links and other spellings too
        raise PipelineError(f"{target}: the output is the input file; write the predictions to another file")
    total = _parquet_rows(source) if file_format(source) == "parquet" and source.is_file() else None
    with atomic_file(target) as tmp:
        writer = ChunkWriter(tmp, kind)
        first_row = 1
        # disable=None: a progress bar on a terminal, none in logs and pipes.
        with tqdm(total=total, unit="rows", desc="predict", disable=None) as progress:
            for chunk in read_chunks(source, chunk_size):
                columns = [text_column] + ([pair_column] if pair_column else [])
                require_columns(chunk, source, *columns)
                if first_row == 1:
                    refuse_prediction_columns(chunk, source)
                for column in columns:
                    bad = chunk[column].map(is_empty_text).to_numpy()
                    if bad.any():
                        raise PipelineError(
                            f"{source}: row {first_row + int(bad.argmax())}: empty or non-text value in column "
                            f"'{column}'"
                        )
                pairs = chunk[pair_column].tolist() if pair_column else None
                predictions = predictor.predict(chunk[text_column].tolist(), pairs).add_prefix(PREFIX)
                writer.write(pd.concat([chunk.reset_index(drop=True), predictions], axis=1))
                first_row += len(chunk)
                progress.update(len(chunk))
        writer.close()
    return writer.rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a model folder (models/model) or an MLflow URI (models:/NAME@champion)"
    )
    parser.add_argument("--input", required=True, type=Path, help="CSV, TSV, JSON Lines or Parquet file")
    parser.add_argument("--output", required=True, type=Path, help="output file; its extension picks the format")
    parser.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    parser.add_argument("--pair-column", help="column holding the second text, for a model trained on text pairs")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows read, predicted and written at a time")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="what runs the model: torch | onnx (fp32) | onnx-int8 (ONNX Runtime); default: the registered "
        "version's own runtime, torch for a model folder",
    )
    sampling = parser.add_argument_group("sampling (text generation; greedy by default)")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampled")
    sampling.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of this probability")
    sampling.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0: all)")
    sampling.add_argument("--seed", type=int, default=0, help="the same seed and input give the same text")
    sampling.add_argument(
        "--max-new-tokens", type=int, default=0, help="tokens a generation may add (0: the model's own, as trained)"
    )
    args = parser.parse_args(argv)
    if args.chunk_size < 1 or args.batch_size < 1:
        parser.error("--chunk-size and --batch-size must be positive")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    file_format(args.input), file_format(args.output)  # refuse unknown types before loading a model
    transformers.logging.disable_progress_bar()  # one bar (ours), not one per weight file
    try:
        sampling = Sampling(args.temperature, args.top_p, args.top_k, args.seed, args.max_new_tokens)
    except ValueError as exc:
        raise PipelineError(f"--{str(exc).replace('_', '-')}") from None
    predictor = load_predictor(args.model, args.runtime)
    # Plain attributes, as this command owns its predictor (one registered by older code has no with_sampling).
    predictor.batch_size, predictor.sampling = args.batch_size, sampling
    if predictor.text_pair != bool(args.pair_column):
        raise PipelineError(
            f"{args.model}: the model reads text pairs: name the second text's column with --pair-column"
            if predictor.text_pair
            else f"{args.model}: the model reads single texts; drop --pair-column"
        )
    rows = predict_file(predictor, args.input, args.output, args.text_column, args.chunk_size, args.pair_column)
    print(f"predict: {rows} rows from {args.input} -> {args.output}")
    return {"rows": rows}


@stage_main
def main() -> None:
    run()


if __name__ == "__main__":
    main()
