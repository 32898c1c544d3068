"""Stage 1: resolve the data source from params and write the normalised table and its data card.

With `ingest.splits`, the source is a folder holding one file per predefined split; their records keep
their split (column `split`) and the split stage does not re-split them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from stages import data, paths
from stages.errors import PipelineError, atomic_dir, stage_main
from stages.params import IngestParams, load_params
from stages.sources import resolve


def read_source(path: Path, params: IngestParams, task: str) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
    """One file in the normalised form: the table, how many records were read, and the counts of what
    was dropped or repaired and why (for the data card)."""
    if params.format == "conll":
        table, repaired = data.read_conll(path, params.encoding, params.conll)
        return table, len(table), {"dropped": {}, "repaired": repaired}
    raw, where = data.read_raw_table(path, params)
    table, dropped = data.normalise(raw, path, where, params, multi_label=task == "multi_label_classification")
    return table, len(raw), {"dropped": dropped, "repaired": {}}


def label_order(tables: list[pd.DataFrame], params: IngestParams, task: str) -> list[str]:
    """The label-id order: tags O, B-X, I-X...; declared `ingest.labels` or score classes as given;
    otherwise the sorted labels of all files together."""
    if task == "token_classification":
        return data.tag_order({tag for table in tables for tags in table[data.TAGS] for tag in tags})
    if params.labels is not None:
        return list(params.labels)
    if params.score_to_label is not None:
        return list(params.score_to_label.names)
    if task == "multi_label_classification":
        return sorted({label for table in tables for label in table.attrs["labels"]})
    return sorted({str(label) for table in tables for label in table[data.LABEL].cat.categories})


def ingest(params: IngestParams, task: str) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    source = resolve(params.source, params.sha256, key="ingest.source", hf_dataset=params.format == "datasets")
    files = {name: source / file for name, file in params.splits.items()} if params.splits else {None: source}
    tables, rows_read = [], 0
    changes: dict[str, dict[str, int]] = {"dropped": {}, "repaired": {}}
    for split_name, path in files.items():
        if not path.exists():
            raise PipelineError(f"{path}: file not found (ingest.splits.{split_name})" if split_name else f"{path}: file not found")
        table, read, file_changes = read_source(path, params, task)
        if split_name is not None:
            table[data.SPLIT] = split_name
        tables.append(table)
        rows_read += read
        for kind, counts in file_changes.items():
            for reason, count in counts.items():
                changes[kind][reason] = changes[kind].get(reason, 0) + count
    labels = label_order(tables, params, task)
    table = pd.concat(tables, ignore_index=True)
    if task == "single_label_classification":
        table[data.LABEL] = pd.Categorical(table[data.LABEL].astype(str), categories=labels)
    describe = data.describe_tokens if task == "token_classification" else data.describe
    card = {"source": params.source, "rows_read": rows_read, **changes, **describe(table)}
    return table, labels, card


@stage_main
def main() -> None:
    params = load_params()
    table, labels, card = ingest(params.ingest, params.task)
    with atomic_dir(paths.INGESTED) as out:
        data.write_table(table, out / "data.parquet")
        data.write_json({"labels": labels}, out / "labels.json")
        data.write_json(card, out / "card.json")
    print(f"ingest: {card['rows']} rows from {params.ingest.source} ({card['labels']})")


if __name__ == "__main__":
    main()
