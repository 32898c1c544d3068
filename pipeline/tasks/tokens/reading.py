"""Ingest and split for named-entity recognition: CoNLL column files to one row per sentence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.tasks.base import Reader
from pipeline.tasks.tokens.spec import TokenClassificationSpec

if TYPE_CHECKING:
    from pipeline.schema import ConllParams, IngestParams


class TokenClassificationReader(TokenClassificationSpec, Reader):
    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
        """The file's sentences; a sentence repeated with the same tags is one example (a retweet, a
        dateline), and the copies of one whose tags disagree are all dropped, both counted, as for labels."""
        table, repaired = read_conll(path, params.encoding, params.conll)
        # the same words, case included: case is what tells "Apple" (B-ORG) from "apple" (O)
        same_words = table[data.TOKENS].map(lambda words: "\x1f".join(words))
        kept, duplicate, conflicting = data.drop_duplicates(table, data.TAGS, keys=same_words)
        dropped = {"duplicate": duplicate, "conflicting_duplicate": conflicting}
        return kept.reset_index(drop=True), len(table), {"dropped": dropped, "repaired": repaired}

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        """O, then B-X and I-X of each entity type in alphabetical order."""
        return tag_order({tag for table in tables for tags in table[data.TAGS] for tag in tags})

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        return describe_tokens(table)

    def strata(self, table: pd.DataFrame) -> pd.Series:
        """CoNLL data comes with its published splits; a re-split stratifies on the sentence's first entity
        type ("O" for none)."""
        return table[data.TAGS].map(lambda tags: next((t[2:] for t in tags if t != "O"), "O"))


def read_conll(path: Path, encoding: str, params: ConllParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a CoNLL column file into one row per sentence: tokens, IOB2 tags, the sentence's first line and
    its document (numbered from 0; each `-DOCSTART-` line starts the next).

    `-DOCSTART-` lines and blank lines separate sentences. A line with fewer columns than the token and
    tag columns need, or an IOB2 error (I-X not after B-X/I-X), stops with the line number, unless
    `repair_iob` is set: then an I-X that starts an entity becomes B-X and is counted for the data card.
    """
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder, expected a CoNLL column file")
    lines = data.decode_text_file(path, encoding).splitlines()
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
                sentences.append(
                    {data.TOKENS: tokens, data.TAGS: tags, data.SOURCE_ROW: start, data.DOCUMENT: document}
                )
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


def tag_order(tags: set[str]) -> list[str]:
    """O first, then B-/I- of each entity type in alphabetical order: a stable label-id order."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def describe_tokens(table: pd.DataFrame) -> dict[str, Any]:
    """Sentence and token counts and entity counts per type, for the data card."""
    from seqeval.metrics.sequence_labeling import get_entities

    entities = pd.Series([kind for tags in table[data.TAGS] for kind, _, _ in get_entities(list(tags))], dtype=object)
    lengths = table[data.TOKENS].map(len)
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
