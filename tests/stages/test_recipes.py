"""The README's recipes, run with exactly the params they show (tiny data and model), so they cannot rot."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import yaml

from builders import sentiment_rows
from helpers import REPO, set_params
from pipeline import paths
from stages import ingest, split


def recipe(name: str) -> dict:
    """The YAML block that follows `<!-- recipe: NAME` in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- recipe: {re.escape(name)}\b.*?-->\s*```yaml\n(.*?)```", readme, re.S)
    assert match, f"README.md has no recipe {name!r}"
    return yaml.safe_load(match.group(1))


def dotted(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"ingest": {"format": "csv"}} -> {"ingest.format": "csv"}; a mapping under score_to_label stays whole."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "score_to_label":
            out |= dotted(value, f"{name}.")
        else:
            out[name] = value
    return out


def test_a_csv_with_star_ratings_becomes_three_classes(project: Path) -> None:
    changes = dotted(recipe("csv-with-stars"))
    source = project / changes["ingest.source"]
    source.parent.mkdir(parents=True, exist_ok=True)
    with source.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "stars"])
        for i, (rating, text) in enumerate(sentiment_rows(150)):
            writer.writerow([text, 3 if i % 5 == 0 else (5 if rating > 0 else 1)])
    set_params(project, changes)
    ingest.main()
    split.main()
    assert json.loads((paths.INGESTED / "labels.json").read_text())["labels"] == ["negative", "neutral", "positive"]
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["rows"] == 150 and card["source"] == "data/raw/reviews.csv"
