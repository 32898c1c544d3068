"""Stage 1: resolve the data source from params and write the normalised table and its data card.

With `ingest.splits`, the source is a folder holding one file per predefined split; their records keep
their split (column `split`) and the split stage does not re-split them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline import data, paths
from pipeline.data.sources import local_path, resolve
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.params import load_params
from pipeline.schema import IngestParams
from pipeline.tasks.base import Reader
from pipeline.tasks.reading import READERS


def require_watched_by_dvc(source: str) -> None:
    """A local source must lie inside data/raw/, the folder dvc.yaml lists as this stage's dependency:
    DVC then re-runs ingest, and what follows, when a file there is edited, added or removed. A file
    anywhere else could change and `dvc repro` would keep the model of the old data."""
    local = local_path(source)
    if local is not None and not local.resolve().is_relative_to(paths.RAW.resolve()):
        raise PipelineError(
            f"ingest.source: {source} is outside {paths.RAW}/, the folder DVC watches for your data "
            f"(dvc.yaml: the ingest stage depends on it); move or copy it there"
        )


def ingest(params: IngestParams, task: Reader) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    require_watched_by_dvc(params.source)
    source = resolve(params.source, params.sha256, key="ingest.source", hf_dataset=params.format == "datasets")
    files = {name: source / file for name, file in params.splits.items()} if params.splits else {None: source}
    tables, rows_read = [], 0
    # what was dropped or repaired, counted by reason; "dropped_rows": the file and line of each dropped row
    changes: dict[str, dict[str, Any]] = {"dropped": {}, "repaired": {}}
    for split_name, path in files.items():
        if not path.exists():
            raise PipelineError(
                f"{path}: file not found (ingest.splits.{split_name})" if split_name else f"{path}: file not found"
            )
        table, read, file_changes = task.read(path, params)
        if split_name is not None:
            table[data.SPLIT] = split_name
        tables.append(table)
        rows_read += read
        for kind, counts in file_changes.items():
            merged = changes.setdefault(kind, {})
            for reason, value in counts.items():  # counts add up, lists of rows join
                merged[reason] = merged[reason] + value if reason in merged else value
    labels = task.label_order(tables, params)
    table = task.finalise(pd.concat(tables, ignore_index=True), labels)
    card = {"source": params.source, "rows_read": rows_read, **changes, **task.describe(table)}
    return table, labels, card


@stage_main
def main() -> None:
    params = load_params()
    table, labels, card = ingest(params.ingest, READERS.for_task(params.task))
    with atomic_dir(paths.INGESTED) as out:
        data.write_table(table, out / "data.parquet")
        data.write_json({"labels": labels}, out / "labels.json")
        data.write_json(card, out / "card.json")
    dropped = {reason: count for reason, count in card["dropped"].items() if count}
    counts = f" ({card['labels']})" if card["labels"] else ""  # free text has no label counts
    print(
        f"ingest: {card['rows']} rows from {params.ingest.source}{counts}" + (f", dropped {dropped}" if dropped else "")
    )


if __name__ == "__main__":
    main()
