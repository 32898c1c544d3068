"""Stage 2: train/validation/test splits and the label map.

Records that came with a predefined split (`ingest.splits`) keep it. Otherwise the split is stratified by
label and seeded. Ingest already merged texts identical up to case and spacing, so a re-split puts no
text in two splits; the stage checks again (and checks predefined splits), then stops or, with
`split.overlap: warn`, counts the overlap in the split card (public benchmarks such as CoNLL-2003 repeat
short sentences across their splits, and their test sets must stay as published).
"""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline import data, paths
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.params import load_params
from pipeline.schema import SplitParams
from pipeline.tasks.base import Reader
from pipeline.tasks.reading import READERS


def stratified_split(table: pd.DataFrame, params: SplitParams, seed: int, task: Reader) -> dict[str, pd.DataFrame]:
    """Train/validation/test, stratified on what the task says (`Reader.strata`), seeded."""
    source = paths.INGESTED / "data.parquet"
    table = table.assign(_stratum=task.strata(table))
    counts = table["_stratum"].value_counts()
    counts = counts[counts > 0]
    if counts.min() < len(paths.SPLITS):
        label = counts.idxmin()
        raise PipelineError(
            f"{source}: class '{label}' has {counts.min()} example(s); a stratified split needs at least "
            f"{len(paths.SPLITS)} (one per split)"
        )
    try:
        train, rest = train_test_split(table, train_size=params.train, stratify=table["_stratum"], random_state=seed)
        validation_share = params.validation / (params.validation + params.test)
        validation, test = train_test_split(
            rest, train_size=validation_share, stratify=rest["_stratum"], random_state=seed
        )
    except ValueError as exc:
        raise PipelineError(f"{source}: cannot split with split.{{train,validation,test}} as given: {exc}") from None
    return {
        "train": train.drop(columns="_stratum"),
        "validation": validation.drop(columns="_stratum"),
        "test": test.drop(columns="_stratum"),
    }


def predefined_split(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    present = set(table[data.SPLIT].unique())
    missing = [name for name in paths.SPLITS if name not in present]
    if missing:
        raise PipelineError(f"ingest.splits: no {' or '.join(missing)} split (needs train, validation and test)")
    return {name: table[table[data.SPLIT] == name].drop(columns=data.SPLIT) for name in paths.SPLITS}


def overlap(parts: dict[str, pd.DataFrame], policy: str) -> dict[str, int]:
    """Texts of validation and test that also occur in an earlier split: an error, or counts with `warn`."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name, part in parts.items():
        for key in dict.fromkeys(data.example_keys(part)):
            first = seen.setdefault(key, name)
            if first != name:
                if policy == "error":
                    raise PipelineError(
                        f"split: the text '{key[:60]}' is in both {first} and {name} (split.overlap: warn accepts this)"
                    )
                counts[f"{name}_in_{first}"] = counts.get(f"{name}_in_{first}", 0) + 1
    return counts


@stage_main
def main() -> None:
    params = load_params()
    task = READERS.for_task(params.task)
    table = data.read_table(paths.INGESTED / "data.parquet")
    if data.SPLIT in table.columns:
        parts = predefined_split(table)
    else:
        parts = stratified_split(table, params.split, params.seed, task)
    overlaps = overlap(parts, params.split.overlap)
    parts = {
        name: part.sort_values(data.SOURCE_ROW, kind="stable").reset_index(drop=True) for name, part in parts.items()
    }
    labels = data.read_json(paths.INGESTED / "labels.json")["labels"]
    card = {name: task.describe(part) for name, part in parts.items()}
    if overlaps:
        card["overlap"] = overlaps
        print(f"split: warning: texts in two splits: {overlaps}")
    with atomic_dir(paths.SPLIT) as out:
        for name, part in parts.items():
            data.write_table(part, out / f"{name}.parquet")
        data.write_json({"labels": labels}, out / "labels.json")
        data.write_json(card, out / "card.json")
    print("split: " + ", ".join(f"{name} {len(part)}" for name, part in parts.items()))


if __name__ == "__main__":
    main()
