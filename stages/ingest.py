"""Stage 1: resolve the data source from params and write the normalised table and its data card."""

from __future__ import annotations

from stages import data, paths
from stages.errors import atomic_dir, stage_main
from stages.params import load_params
from stages.sources import resolve


@stage_main
def main() -> None:
    params = load_params().ingest
    path = resolve(params.source, params.sha256, key="ingest.source")
    raw, where = data.read_raw_table(path, params)
    table, dropped = data.normalise(raw, path, where, params)
    card = {"source": params.source, "rows_read": int(len(raw)), "dropped": dropped, **data.describe(table)}
    with atomic_dir(paths.INGESTED) as out:
        data.write_table(table, out / "data.parquet")
        data.write_json(card, out / "card.json")
    print(f"ingest: {card['rows']} rows from {params.source} ({card['labels']})")


if __name__ == "__main__":
    main()
