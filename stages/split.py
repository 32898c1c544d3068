"""Stage 2: stratified, seeded train/validation/test split and the label map.

Ingest already merged texts that are identical up to case and spacing, so no text can land in two
splits; the split checks that guarantee again before writing anything.
"""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from stages import data, paths
from stages.errors import PipelineError, atomic_dir, stage_main
from stages.params import SplitParams, load_params


def stratified_split(table: pd.DataFrame, params: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    source = paths.INGESTED / "data.parquet"
    counts = table[data.LABEL].value_counts()
    counts = counts[counts > 0]
    if counts.min() < len(paths.SPLITS):
        label = counts.idxmin()
        raise PipelineError(
            f"{source}: class '{label}' has {counts.min()} example(s); a stratified split needs at least "
            f"{len(paths.SPLITS)} (one per split)"
        )
    labels = table[data.LABEL].astype(str)
    try:
        train, rest = train_test_split(table, train_size=params.train, stratify=labels, random_state=seed)
        validation_share = params.validation / (params.validation + params.test)
        validation, test = train_test_split(
            rest, train_size=validation_share, stratify=rest[data.LABEL].astype(str), random_state=seed
        )
    except ValueError as exc:
        raise PipelineError(f"{source}: cannot split with split.{{train,validation,test}} as given: {exc}") from None
    parts = {"train": train, "validation": validation, "test": test}
    _check_disjoint(parts)
    return {name: part.sort_values(data.SOURCE_ROW).reset_index(drop=True) for name, part in parts.items()}


def _check_disjoint(parts: dict[str, pd.DataFrame]) -> None:
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for key in data.dedup_keys(part[data.TEXT]):
            if seen.setdefault(key, name) != name:
                raise PipelineError(f"split: the text '{key[:60]}' is in both {seen[key]} and {name}")


@stage_main
def main() -> None:
    params = load_params()
    table = data.read_table(paths.INGESTED / "data.parquet")
    parts = stratified_split(table, params.split, params.seed)
    labels = [str(c) for c in table[data.LABEL].cat.categories]
    card = {name: data.describe(part) for name, part in parts.items()}
    with atomic_dir(paths.SPLIT) as out:
        for name, part in parts.items():
            data.write_table(part, out / f"{name}.parquet")
        data.write_json({"labels": labels}, out / "labels.json")
        data.write_json(card, out / "card.json")
    print("split: " + ", ".join(f"{name} {len(part)}" for name, part in parts.items()))


if __name__ == "__main__":
    main()
