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
from pipeline.schema import ConllParams, IngestParams

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


def read_conll(path: Path, encoding: str, params: ConllParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a CoNLL column file into one row per sentence: tokens, IOB2 tags, the sentence's first line and
    its document (numbered from 0; each `-DOCSTART-` line starts the next).

    `-DOCSTART-` lines and blank lines separate sentences. A line with fewer columns than the token and
    tag columns need, or an IOB2 error (I-X not after B-X/I-X), stops with the line number, unless
    `repair_iob` is set: then an I-X that starts an entity becomes B-X and is counted for the data card.
    """
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder, expected a CoNLL column file")
    lines = decode_text_file(path, encoding).splitlines()
    # Token and tag are two different columns, so a line needs at least two, and enough for both indices.
    needed = max(2, params.token_column + 1, params.tag_column + 1, -params.tag_column, -params.token_column)
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    repaired = 0
    start = 0
    document = 0
    for number, line in enumerate([*lines, ""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if tokens:
                sentences.append({TOKENS: tokens, TAGS: tags, SOURCE_ROW: start, DOCUMENT: document})
            tokens, tags = [], []
            if columns and sentences:
                document += 1  # a -DOCSTART- after some sentences opens the next document
            continue
        if len(columns) < needed:
            raise PipelineError(
                f"{path}: line {number}: {len(columns)} column(s), expected at least {needed} "
                f"(ingest.conll.token_column/tag_column)"
            )
        tag = columns[params.tag_column]
        if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag):
            raise PipelineError(f"{path}: line {number}: tag '{tag}' is not IOB2 (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:]):
            if not params.repair_iob:
                raise PipelineError(
                    f"{path}: line {number}: '{tag}' does not continue an entity "
                    f"(after '{tags[-1] if tags else 'sentence start'}'); set ingest.conll.repair_iob to repair it to "
                    f"B-"
                )
            tag, repaired = "B-" + tag[2:], repaired + 1
        if not tokens:
            start = number
        tokens.append(columns[params.token_column])
        tags.append(tag)
    if not sentences:
        raise PipelineError(f"{path}: no sentences found")
    return pd.DataFrame(sentences), {"iob_repaired": repaired}


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


def tag_order(tags: set[str]) -> list[str]:
    """O first, then B-/I- of each entity type in alphabetical order: a stable label-id order."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def describe_tokens(table: pd.DataFrame) -> dict[str, Any]:
    """Sentence and token counts and entity counts per type, for the data card."""
    from seqeval.metrics.sequence_labeling import get_entities

    entities = pd.Series([kind for tags in table[TAGS] for kind, _, _ in get_entities(list(tags))], dtype=object)
    lengths = table[TOKENS].map(len)
    return {
        "rows": int(len(table)),
        "tokens": int(lengths.sum()),
        "labels": {str(k): int(v) for k, v in entities.value_counts().sort_index().items()},
        "text_words": {
            "mean": round(float(lengths.mean()), 2),
            "median": round(float(lengths.median()), 2),
            "p95": round(float(lengths.quantile(0.95)), 2),
            "max": int(lengths.max()),
        },
    }


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
        empty_text |= frame[column].map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy()
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
        bad_text = table[name].map(lambda v: not isinstance(v, str) or not v.strip())
        if bad_text.any():
            row = table.loc[bad_text, SOURCE_ROW].iloc[0]
            raise PipelineError(f"{path}: {where} {row}: empty text in column '{column}'")
        table[name] = table[name].str.strip()
    return table


def normalise_label_sets(
    frame: pd.DataFrame, path: Path, where: str, params: IngestParams
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Multi-label: `label` becomes a sorted list of labels (0..n per text) read from a list column or a
    `ingest.label_delimiter`-separated string; the label-id order is kept in `table.attrs["labels"]`.
    Duplicates are dropped. Returns the table and what was dropped ({"dropped": counts}), for the data card."""
    table = select_texts(frame, path, where, params)
    dropped: dict[str, int] = {}
    table[LABEL] = table[LABEL].map(lambda v: _label_set(v, params.label_delimiter))
    present = sorted({label for labels in table[LABEL] for label in labels})
    order = [label_text(label) for label in params.labels] if params.labels is not None else present
    unknown = table[LABEL].map(lambda labels: next((label for label in labels if label not in order), None))
    if unknown.notna().any():
        row, value = table.loc[unknown.notna(), SOURCE_ROW].iloc[0], unknown.dropna().iloc[0]
        raise PipelineError(f"{path}: {where} {row}: label '{value}' is not in ingest.labels {params.labels}")
    table, dropped["duplicate"], dropped["conflicting_duplicate"] = drop_duplicates(table)
    if len(present) < 2:
        raise PipelineError(
            f"{path}: {len(present)} distinct label(s) after ingest; multi-label classification needs at least two"
        )
    table = table.reset_index(drop=True)
    table.attrs["labels"] = order
    return table, {"dropped": dropped}


def normalise_single_labels(
    frame: pd.DataFrame, path: Path, where: str, params: IngestParams
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One label per text: scores mapped to classes, labels written as numbers in one form (label_text),
    checked against `ingest.labels`, duplicates dropped; `label` becomes a Categorical in label-id order.
    Returns the table and what was dropped and repaired ({"dropped": counts, "repaired": counts}), for the
    data card."""
    table = select_texts(frame, path, where, params)
    dropped: dict[str, int] = {}
    repaired: dict[str, int] = {}
    # A label list (fastText lines, list columns) must hold exactly one label for single-label tasks.
    is_list = table[LABEL].map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
    several = is_list & (table[LABEL].map(lambda v: len(v) if isinstance(v, (list, tuple, np.ndarray)) else 1) > 1)
    if several.any():
        row = table.loc[several, SOURCE_ROW].iloc[0]
        raise PipelineError(
            f"{path}: {where} {row}: several labels, but task single_label_classification takes one "
            f"(multi_label_classification takes sets)"
        )
    table[LABEL] = table[LABEL].map(
        lambda v: (v[0] if len(v) else None) if isinstance(v, (list, tuple, np.ndarray)) else v
    )
    missing_label = table[LABEL].map(is_missing)
    if missing_label.any():
        row = table.loc[missing_label, SOURCE_ROW].iloc[0]
        raise PipelineError(f"{path}: {where} {row}: missing label in column '{params.label_column}'")

    if params.score_to_label is not None:
        table, dropped_values = _scores_to_classes(table, path, where, params)
        dropped["label_in_drop_values"] = dropped_values
        order = list(params.score_to_label.names)
    else:
        as_written = table[LABEL].map(lambda v: str(v).strip())
        table[LABEL] = table[LABEL].map(label_text)
        repaired["label_written_as_number"] = int((as_written != table[LABEL]).sum())
        order = sorted(table[LABEL].unique())
    if params.labels is not None:
        declared = [label_text(label) for label in params.labels]
        unknown = ~table[LABEL].isin(declared)
        if unknown.any():
            row, value = table.loc[unknown, [SOURCE_ROW, LABEL]].iloc[0]
            raise PipelineError(f"{path}: {where} {row}: label '{value}' is not in ingest.labels {params.labels}")
        order = declared

    table, dropped["duplicate"], dropped["conflicting_duplicate"] = drop_duplicates(table)

    present = table[LABEL].unique()
    if len(present) < 2:
        only = present[0] if len(present) else "none"
        raise PipelineError(f"{path}: only one class ({only}) after ingest; classification needs at least two")
    # Declared labels absent from the data keep their id, so label ids do not shift between datasets.
    table[LABEL] = pd.Categorical(table[LABEL], categories=order)
    return table.reset_index(drop=True), {"dropped": dropped, "repaired": repaired}


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


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() in MISSING


def _label_set(value: Any, delimiter: str | None) -> list[str]:
    """A multi-label cell as a sorted list of distinct labels: a list column as is, a string split on the
    delimiter; empty, missing or None is the empty set (a text may have no label)."""
    if is_missing(value) and not isinstance(value, (list, tuple, np.ndarray)):
        return []
    items = (
        list(value)
        if isinstance(value, (list, tuple, np.ndarray))
        else (str(value).split(delimiter) if delimiter else [str(value)])
    )
    return sorted({label_text(item) for item in items if not is_missing(item)})


def _scores_to_classes(table: pd.DataFrame, path: Path, where: str, params: IngestParams) -> tuple[pd.DataFrame, int]:
    rule = params.score_to_label
    assert rule is not None
    scores = pd.to_numeric(table[LABEL], errors="coerce")
    if scores.isna().any():
        row, value = table.loc[scores.isna(), [SOURCE_ROW, LABEL]].iloc[0]
        raise PipelineError(f"{path}: {where} {row}: label '{value}' is not a number (ingest.score_to_label)")
    keep = ~scores.isin(rule.drop_values)
    table, scores = table[keep].copy(), scores[keep]
    # searchsorted(side="left") puts a value equal to thresholds[i] in class i: class i covers (t[i-1], t[i]].
    table[LABEL] = np.asarray(rule.names, dtype=object)[
        np.searchsorted(rule.thresholds, scores.to_numpy(), side="left")
    ]
    return table, int((~keep).sum())


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
