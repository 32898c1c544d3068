"""Ingest and split for sequence classification: raw tables to texts with one label, or a set of labels."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.tasks.base import Reader
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec, TextClassificationSpec

if TYPE_CHECKING:
    from pipeline.schema import IngestParams


class TextClassificationReader(TextClassificationSpec, Reader):
    """Reading tables of texts and labels, what single-label and multi-label share."""

    @abstractmethod
    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The raw table's texts and labels in the normalised form, and what was dropped and repaired
        ({"dropped": counts, "repaired": counts}, for the data card)."""

    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, Any]]]:
        raw, where = data.read_raw_table(path, params)
        kept, bad_rows = data.drop_bad_rows(raw, path, where, params, self.label_required)
        table, changes = self.normalise(kept, path, where, params)
        for kind, counts in bad_rows.items():
            changes[kind] = counts | changes.get(kind, {})
        return table, len(raw), changes

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        return data.describe(table)


class SingleLabelReader(SingleLabelSpec, TextClassificationReader):
    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return normalise_single_labels(raw, path, where, params)

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        """Declared `ingest.labels` or score classes as given; otherwise the sorted labels of all files."""
        if params.labels is not None:
            return list(params.labels)
        if params.score_to_label is not None:
            return list(params.score_to_label.names)
        return sorted({str(label) for table in tables for label in table[data.LABEL].cat.categories})

    def finalise(self, table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        table[data.LABEL] = pd.Categorical(table[data.LABEL].astype(str), categories=labels)
        return table

    def strata(self, table: pd.DataFrame) -> pd.Series:
        return table[data.LABEL].astype(str)


class MultiLabelReader(MultiLabelSpec, TextClassificationReader):
    def normalise(
        self, raw: pd.DataFrame, path: Path, where: str, params: IngestParams
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return normalise_label_sets(raw, path, where, params)

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        if params.labels is not None:
            return list(params.labels)
        return sorted({label for table in tables for label in table.attrs["labels"]})

    def strata(self, table: pd.DataFrame) -> pd.Series:
        """The rarest label of each set ("none" for an empty set): every label lands in every split without
        iterative stratification, at the cost of balancing co-occurrences only roughly."""
        frequency = table[data.LABEL].explode().value_counts()
        return table[data.LABEL].map(
            lambda labels: min(labels, key=lambda label: (frequency[label], label)) if len(labels) else "none"
        )


def normalise_single_labels(
    frame: pd.DataFrame, path: Path, where: str, params: IngestParams
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One label per text: scores mapped to classes, labels written as numbers in one form (data.label_text),
    checked against `ingest.labels`, duplicates dropped; `label` becomes a Categorical in label-id order.
    Returns the table and what was dropped and repaired ({"dropped": counts, "repaired": counts}), for the
    data card."""
    table = data.select_texts(frame, path, where, params)
    dropped: dict[str, int] = {}
    repaired: dict[str, int] = {}
    # A label list (fastText lines, list columns) must hold exactly one label for single-label tasks.
    is_list = table[data.LABEL].map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
    several = is_list & (table[data.LABEL].map(lambda v: len(v) if isinstance(v, (list, tuple, np.ndarray)) else 1) > 1)
    if several.any():
        row = table.loc[several, data.SOURCE_ROW].iloc[0]
        raise PipelineError(
            f"{path}: {where} {row}: several labels, but task single_label_classification takes one "
            f"(multi_label_classification takes sets)"
        )
    table[data.LABEL] = table[data.LABEL].map(
        lambda v: (v[0] if len(v) else None) if isinstance(v, (list, tuple, np.ndarray)) else v
    )
    missing_label = table[data.LABEL].map(data.is_missing)
    if missing_label.any():
        row = table.loc[missing_label, data.SOURCE_ROW].iloc[0]
        raise PipelineError(f"{path}: {where} {row}: missing label in column '{params.label_column}'")

    if params.score_to_label is not None:
        table, dropped_values = _scores_to_classes(table, path, where, params)
        dropped["label_in_drop_values"] = dropped_values
        order = list(params.score_to_label.names)
    else:
        as_written = table[data.LABEL].map(lambda v: str(v).strip())
        table[data.LABEL] = table[data.LABEL].map(data.label_text)
        repaired["label_written_as_number"] = int((as_written != table[data.LABEL]).sum())
        order = sorted(table[data.LABEL].unique())
    if params.labels is not None:
        declared = [data.label_text(label) for label in params.labels]
        unknown = ~table[data.LABEL].isin(declared)
        if unknown.any():
            row, value = table.loc[unknown, [data.SOURCE_ROW, data.LABEL]].iloc[0]
            raise PipelineError(f"{path}: {where} {row}: label '{value}' is not in ingest.labels {params.labels}")
        order = declared

    table, dropped["duplicate"], dropped["conflicting_duplicate"] = data.drop_duplicates(table)

    present = table[data.LABEL].unique()
    if len(present) < 2:
        only = present[0] if len(present) else "none"
        raise PipelineError(f"{path}: only one class ({only}) after ingest; classification needs at least two")
    # Declared labels absent from the data keep their id, so label ids do not shift between datasets.
    table[data.LABEL] = pd.Categorical(table[data.LABEL], categories=order)
    return table.reset_index(drop=True), {"dropped": dropped, "repaired": repaired}


def normalise_label_sets(
    frame: pd.DataFrame, path: Path, where: str, params: IngestParams
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Multi-label: `label` becomes a sorted list of labels (0..n per text) read from a list column or a
    `ingest.label_delimiter`-separated string; the label-id order is kept in `table.attrs["labels"]`.
    Duplicates are dropped. Returns the table and what was dropped ({"dropped": counts}), for the data card."""
    table = data.select_texts(frame, path, where, params)
    dropped: dict[str, int] = {}
    table[data.LABEL] = table[data.LABEL].map(lambda v: _label_set(v, params.label_delimiter))
    present = sorted({label for labels in table[data.LABEL] for label in labels})
    order = [data.label_text(label) for label in params.labels] if params.labels is not None else present
    unknown = table[data.LABEL].map(lambda labels: next((label for label in labels if label not in order), None))
    if unknown.notna().any():
        row, value = table.loc[unknown.notna(), data.SOURCE_ROW].iloc[0], unknown.dropna().iloc[0]
        raise PipelineError(f"{path}: {where} {row}: label '{value}' is not in ingest.labels {params.labels}")
    table, dropped["duplicate"], dropped["conflicting_duplicate"] = data.drop_duplicates(table)
    if len(present) < 2:
        raise PipelineError(
            f"{path}: {len(present)} distinct label(s) after ingest; multi-label classification needs at least two"
        )
    table = table.reset_index(drop=True)
    table.attrs["labels"] = order
    return table, {"dropped": dropped}


def _label_set(value: Any, delimiter: str | None) -> list[str]:
    """A multi-label cell as a sorted list of distinct labels: a list column as is, a string split on the
    delimiter; empty, missing or None is the empty set (a text may have no label)."""
    if data.is_missing(value) and not isinstance(value, (list, tuple, np.ndarray)):
        return []
    items = (
        list(value)
        if isinstance(value, (list, tuple, np.ndarray))
        else (str(value).split(delimiter) if delimiter else [str(value)])
    )
    return sorted({data.label_text(item) for item in items if not data.is_missing(item)})


def _scores_to_classes(table: pd.DataFrame, path: Path, where: str, params: IngestParams) -> tuple[pd.DataFrame, int]:
    rule = params.score_to_label
    assert rule is not None
    scores = pd.to_numeric(table[data.LABEL], errors="coerce")
    if scores.isna().any():
        row, value = table.loc[scores.isna(), [data.SOURCE_ROW, data.LABEL]].iloc[0]
        raise PipelineError(f"{path}: {where} {row}: label '{value}' is not a number (ingest.score_to_label)")
    keep = ~scores.isin(rule.drop_values)
    table, scores = table[keep].copy(), scores[keep]
    # searchsorted(side="left") puts a value equal to thresholds[i] in class i: class i covers (t[i-1], t[i]].
    table[data.LABEL] = np.asarray(rule.names, dtype=object)[
        np.searchsorted(rule.thresholds, scores.to_numpy(), side="left")
    ]
    return table, int((~keep).sum())
