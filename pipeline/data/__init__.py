"""Reading raw tables into the pipeline's normalised form, and the checks that guard it.

The normalised table has three columns: `text` (str), `label` (a pandas Categorical whose category order
is the label-id order) and `source_row` (where the record sits in the raw file, for error messages and
traceability). Every check stops with one line naming the file and the row.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.schema import IngestParams

TEXT, LABEL, SOURCE_ROW = "text", "label", "source_row"
TEXT_PAIR = "text_pair"  # the second text of a pair (ingest.text_column: [first, second])
TOKENS, TAGS = "tokens", "tags"  # token classification: a sentence's words and their IOB2 tags
DOCUMENT = "document"  # token classification: the document a sentence belongs to (CoNLL -DOCSTART- blocks)
SPLIT = "split"  # the predefined split of a record, when the source has one
SLICE = "slice"  # the values of `ingest.slice_column`, carried to evaluate's sliced metrics
HISTORY = "history"  # text_generation chats: the turns before the last user message (prompting.History as JSON)


def decode_text_file(path: Path, encoding: str) -> str:
    """Decode strictly: a byte that does not decode is an error naming the line, never a replacement."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PipelineError(f"{path}: line {line}: bytes do not decode as {encoding} ({exc.reason})") from None
    except LookupError:
        raise PipelineError(f"ingest.encoding: unknown encoding '{encoding}'") from None


def read_raw_table(path: Path, params: IngestParams) -> tuple[pd.DataFrame, str]:
    """Read the raw source as a table. Returns the frame (one row per record, `source_row` set) and the
    word used for positions in error messages ("line" for text formats, "row" for tables, "file" for a
    folder of files)."""
    if params.format == "folder":
        return _read_class_folders(path, params)
    if params.format == "datasets":
        return _read_saved_dataset(path)
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder, expected a {params.format} file")
    if params.format == "text":
        return _read_fasttext(path, params)
    header = 0 if params.header else None
    try:
        if params.format in ("tsv", "csv"):
            text = decode_text_file(path, params.encoding)
            if params.format == "tsv":
                require_one_field_count(text, path, params)
            frame = pd.read_csv(
                io.StringIO(text),
                sep="\t" if params.format == "tsv" else ",",
                header=header,
                names=params.column_names,
                dtype=str,
                keep_default_na=False,
                # Quote characters are ordinary text in TSV (movie snippets contain '' and ").
                quoting=csv.QUOTE_NONE if params.format == "tsv" else csv.QUOTE_MINIMAL,
            )
            first_line = 2 if params.header else 1
            frame[SOURCE_ROW] = np.arange(first_line, first_line + len(frame))
            return frame, "line"
        if params.format == "jsonl":
            text = decode_text_file(path, params.encoding)
            records = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    records.append({**json_record(line, path, number), SOURCE_ROW: number})
            return pd.DataFrame.from_records(records), "line"
        frame = pd.read_parquet(path)
        frame[SOURCE_ROW] = np.arange(1, len(frame) + 1)
        return frame, "row"
    except pd.errors.ParserError as exc:
        raise PipelineError(f"{path}: cannot parse as {params.format}: {str(exc).strip().splitlines()[-1]}") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: cannot read as {params.format}: {exc}") from None


def require_one_field_count(text: str, path: Path, params: IngestParams) -> None:
    """Every line of a TSV has as many tab-separated fields as the columns. TSV has no quoting, so a tab
    inside a text makes one more field, and pandas would then shift the columns of that line (or, on the
    first line, of every line) without a word; the line is named instead."""
    lines = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.rstrip("\r")]
    if not lines:
        return
    if params.column_names:
        expected, basis = len(params.column_names), f"ingest.column_names has {len(params.column_names)}"
    else:
        first_number, first = lines[0]
        expected = first.rstrip("\r").count("\t") + 1
        basis = f"{'the header' if params.header else 'line'} (line {first_number}) has {expected}"
    for number, line in lines:
        found = line.rstrip("\r").count("\t") + 1
        if found != expected:
            raise PipelineError(
                f"{path}: line {number}: {found} tab-separated fields, expected {expected} ({basis}); "
                "a text in a TSV file cannot contain a tab"
            )


def json_record(line: str, path: Path, number: int) -> dict[str, Any]:
    """One JSON Lines record; a line that is not a JSON object stops with its number."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: line {number}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise PipelineError(f"{path}: line {number}: expected a JSON object")
    return record


FASTTEXT_LABEL = "__label__"


def _read_fasttext(path: Path, params: IngestParams) -> tuple[pd.DataFrame, str]:
    """Plain text, one record per line in fastText's layout: `__label__A [__label__B ...] the text`."""
    rows = []
    for number, line in enumerate(decode_text_file(path, params.encoding).splitlines(), start=1):
        if not line.strip():
            continue
        words = line.split()
        labels = [w.removeprefix(FASTTEXT_LABEL) for w in words if w.startswith(FASTTEXT_LABEL)]
        text = " ".join(w for w in words if not w.startswith(FASTTEXT_LABEL))
        rows.append({params.text_column: text, params.label_column: labels, SOURCE_ROW: number})
    return pd.DataFrame(rows, columns=[params.text_column, params.label_column, SOURCE_ROW]), "line"


def _read_class_folders(path: Path, params: IngestParams) -> tuple[pd.DataFrame, str]:
    """One sub-folder per class, one `.txt` file per text (the layout of IMDB-style corpora)."""
    if not path.is_dir():
        raise PipelineError(f"{path}: expected a folder with one sub-folder per class (ingest.format folder)")
    rows = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.glob("*.txt")):
            rows.append(
                {
                    params.text_column: decode_text_file(file, params.encoding),
                    params.label_column: class_dir.name,
                    SOURCE_ROW: f"{class_dir.name}/{file.name}",
                }
            )
    if not rows:
        raise PipelineError(f"{path}: no class sub-folders with .txt files (ingest.format folder)")
    return pd.DataFrame(rows), "file"


def _read_saved_dataset(path: Path) -> tuple[pd.DataFrame, str]:
    """A `datasets` Dataset saved with save_to_disk (a DatasetDict's splits are named in ingest.splits)."""
    from datasets import Dataset, load_from_disk

    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        raise PipelineError(
            f"{path}: a DatasetDict with splits {names}; name them in ingest.splits (e.g. {{train: {names[0]}, ...}})"
        )
    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(f"{path}: not a dataset saved with save_to_disk ({str(exc).splitlines()[0]})") from None
    assert isinstance(dataset, Dataset)
    frame = dataset.to_pandas()
    frame[SOURCE_ROW] = np.arange(1, len(frame) + 1)
    return frame, "row"


PAIR_SEPARATOR = " ||| "  # between the two texts of a pair where one string stands for both


def raw_texts(table: pd.DataFrame) -> list[str]:
    """The texts as one string each: the text column, a pair joined by PAIR_SEPARATOR, or a sentence's
    words joined by spaces (for duplicate and overlap checks and the classical baseline)."""
    if TOKENS in table.columns:
        return [" ".join(tokens) for tokens in table[TOKENS]]
    if TEXT_PAIR in table.columns:
        return [a + PAIR_SEPARATOR + b for a, b in zip(table[TEXT], table[TEXT_PAIR])]
    return table[TEXT].tolist()


def example_keys(table: pd.DataFrame) -> pd.Series:
    """What makes two records the same example, for duplicate and overlap checks: the raw text up to case
    and spacing, with a chat's history (the same last message in two conversations is two examples)."""
    texts = raw_texts(table)
    if HISTORY in table.columns:
        texts = [text + PAIR_SEPARATOR + history for text, history in zip(texts, table[HISTORY])]
    return dedup_keys(pd.Series(texts, index=table.index, dtype=object))


def text_pairs(table: pd.DataFrame) -> list[str] | None:
    """The second texts of a pair table, None for single texts."""
    return table[TEXT_PAIR].tolist() if TEXT_PAIR in table.columns else None


def require_columns(frame: pd.DataFrame, source: Path, *columns: str) -> None:
    """Stop naming the first of `columns` that `frame` lacks, and the columns it has."""
    missing = next((column for column in columns if column not in frame.columns), None)
    if missing is not None:
        raise PipelineError(f"{source}: no column '{missing}' (columns: {', '.join(map(str, frame.columns))})")


def drop_bad_rows(
    frame: pd.DataFrame, path: Path, where: str, params: IngestParams, label_required: bool
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """With `ingest.bad_rows: drop`, the rows with an empty text (or, where every text needs one, a missing
    label) are dropped, counted and listed by their file and line for the data card; with `stop` (the
    default) nothing is dropped here and select_texts stops at the first one."""
    if params.bad_rows == "stop" or frame.empty:
        return frame, {}
    text_columns = params.text_column if isinstance(params.text_column, list) else [params.text_column]
    require_columns(frame, path, *text_columns, params.label_column)
    empty_text = np.zeros(len(frame), dtype=bool)
    for column in text_columns:
        empty_text |= frame[column].map(is_empty_text).to_numpy()
    missing_label = frame[params.label_column].map(is_missing).to_numpy() & ~empty_text if label_required else None
    reasons = {"empty_text": empty_text} | ({"missing_label": missing_label} if label_required else {})
    changes: dict[str, dict[str, Any]] = {"dropped": {}, "dropped_rows": {}}
    for reason, bad in reasons.items():
        changes["dropped"][reason] = int(bad.sum())
        changes["dropped_rows"][reason] = [f"{path.name}:{where} {row}" for row in frame.loc[bad, SOURCE_ROW]]
    keep = ~np.logical_or.reduce(list(reasons.values()))
    return frame[keep].reset_index(drop=True), changes


def select_texts(frame: pd.DataFrame, path: Path, where: str, params: IngestParams) -> pd.DataFrame:
    """The text column(s) (stripped, never empty), the raw label column and `source_row` of a raw table."""
    if frame.empty:
        raise PipelineError(f"{path}: no records (only a header, or nothing)")
    text_columns = dict(zip((TEXT, TEXT_PAIR), params.text_column if params.text_pair else [params.text_column]))
    slice_columns = [params.slice_column] if params.slice_column else []
    require_columns(frame, path, *text_columns.values(), params.label_column, *slice_columns)
    table = pd.DataFrame(
        {
            **{name: frame[column] for name, column in text_columns.items()},
            LABEL: frame[params.label_column],
            SOURCE_ROW: frame[SOURCE_ROW],
        }
    )
    if params.slice_column:
        table[SLICE] = frame[params.slice_column].map(lambda v: "(missing)" if is_missing(v) else str(v).strip())
    for name, column in text_columns.items():
        bad_text = table[name].map(is_empty_text)
        if bad_text.any():
            row = table.loc[bad_text, SOURCE_ROW].iloc[0]
            raise PipelineError(f"{path}: {where} {row}: empty text in column '{column}'")
        table[name] = table[name].str.strip()
    return table


# What pandas reads as missing in a CSV (its default na_values); the pipeline reads cells as text (a text
# may be "NA"), so for labels these mean "no label": a missing label, never a class called "NaN".
MISSING = {"", "nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "NULL", "null", "None", "<NA>", "#NA"}


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def label_text(value: Any) -> str:
    """One label as text, the same however the file wrote it: a number (1, 1.0, "1", " 1.0 ") is written in
    its shortest form ("1", "2.5"), so a JSON Lines column holding 1, "1" and 1.0 has one class, not three;
    any other label is its text, stripped. (A string label such as "01" becomes "1" too: labels that are
    numbers are compared as numbers.)"""
    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) or _DECIMAL.fullmatch(text)):
        return text
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return text
    if not number.is_finite():
        return text
    return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")


def is_empty_text(value: Any) -> bool:
    """A text cell with nothing to read: not a string, or only spaces."""
    return not isinstance(value, str) or not value.strip()


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() in MISSING


def _dedup_key(text: str) -> str:
    # Texts that differ only in case or spacing are the same example for leakage purposes.
    return re.sub(r"\s+", " ", text).strip().casefold()


def drop_duplicates(
    table: pd.DataFrame, target: str = LABEL, keys: pd.Series | None = None
) -> tuple[pd.DataFrame, int, int]:
    """Keep the first of identical texts (or sentences) with one target; drop every copy of a text whose
    copies disagree. `target`: the label column, or the tags of token classification; `keys`: what makes
    two rows the same (default: the text up to case and spacing, example_keys)."""
    keys = example_keys(table) if keys is None else keys
    # label sets and tag sequences compare as tuples
    hashable = table[target].map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)
    labels_per_key = hashable.groupby(keys).nunique()
    conflicting = keys.isin(labels_per_key[labels_per_key > 1].index)
    repeated = keys.duplicated() & ~conflicting
    kept = table[~conflicting & ~repeated]
    return kept, int(repeated.sum()), int(conflicting.sum())


def dedup_keys(texts: pd.Series) -> pd.Series:
    return texts.map(_dedup_key)


def describe(table: pd.DataFrame) -> dict[str, Any]:
    """Row count, label distribution and text-length statistics, for the data card."""
    chars = table[TEXT].str.len()
    words = table[TEXT].str.split().map(len)

    def stats(values: pd.Series) -> dict[str, float]:
        return {
            "mean": round(float(values.mean()), 2),
            "median": round(float(values.median()), 2),
            "p95": round(float(values.quantile(0.95)), 2),
            "max": int(values.max()),
        }

    labels = (
        table[LABEL].explode() if table[LABEL].map(lambda v: isinstance(v, (list, np.ndarray))).any() else table[LABEL]
    )
    counts = labels.value_counts(sort=False)
    return {
        "rows": int(len(table)),
        "labels": {str(label): int(count) for label, count in counts.items()},
        "text_chars": stats(chars),
        "text_words": stats(words),
    }


def write_table(table: pd.DataFrame, path: Path) -> None:
    table.to_parquet(path, index=False)


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    return pd.read_parquet(path)


def load_tokenized(path: Path) -> Any:
    """The DatasetDict written by the tokenize stage."""
    from datasets import load_from_disk

    if not (path / "dataset_dict.json").is_file():
        raise PipelineError(f"{path}: tokenized data not found (run the stage that writes it: dvc repro)")
    return load_from_disk(str(path))


def write_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise PipelineError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: invalid JSON at line {exc.lineno}") from None
