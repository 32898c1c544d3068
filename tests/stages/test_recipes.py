"""The README's recipes, run with exactly the params they show (tiny data and model), so they cannot rot."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import yaml
from datasets import load_from_disk

from builders import sentiment_rows
from helpers import REPO, dotted, set_params
from pipeline import paths
from pipeline.data.encoding import IGNORE_INDEX
from stages import ingest, split, tokenize


def recipe(name: str) -> dict:
    """The YAML block that follows `<!-- recipe: NAME` in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- recipe: {re.escape(name)}\b.*?-->\s*```yaml\n(.*?)```", readme, re.S)
    assert match, f"README.md has no recipe {name!r}"
    return yaml.safe_load(match.group(1))


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


def test_one_folder_per_class_labels_each_text_by_its_folder(project: Path) -> None:
    changes = dotted(recipe("folder-per-class"))
    corpus = project / changes["ingest.source"]
    for i, (rating, text) in enumerate(sentiment_rows(60)):
        folder = corpus / ("positive" if rating > 0 else "negative")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"review-{i}.txt").write_text(text, encoding="utf-8")
    set_params(project, changes)
    ingest.main()
    split.main()
    assert json.loads((paths.INGESTED / "labels.json").read_text())["labels"] == ["negative", "positive"]
    card = json.loads((paths.INGESTED / "card.json").read_text())
    assert card["rows"] == 60 and card["labels"] == {"negative": 30, "positive": 30}


def test_chats_for_a_decoder_learn_every_reply_in_the_context_of_the_turns_before(
    project: Path, tiny_llama: Path
) -> None:
    changes = dotted(recipe("chat-jsonl"))
    # the recipe's SmolLM2 swapped for a tiny decoder with a chat template: tests download nothing
    changes |= {"model.source": str(tiny_llama), "model.sha256": None}
    source = project / changes["ingest.source"]
    source.parent.mkdir(parents=True, exist_ok=True)
    with source.open("w", encoding="utf-8") as fh:
        rows = sentiment_rows(120)
        for (rating, text), (earlier_rating, earlier_text) in zip(rows[:60], rows[60:]):
            messages = [
                {"role": "user", "content": earlier_text},
                {"role": "assistant", "content": "good film" if earlier_rating > 0 else "bad film"},
                {"role": "user", "content": text},
                {"role": "assistant", "content": "good film" if rating > 0 else "bad film"},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    set_params(project, changes)
    ingest.main()
    split.main()
    tokenize.main()
    table = pd.read_parquet(paths.INGESTED / "data.parquet")
    assert len(table) == 60 and set(table["label"]) == {"good film", "bad film"}
    train = load_from_disk(str(paths.TOKENIZED))["train"]
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in train["labels"])  # a reply is learnt
    assert all(labels[0] == IGNORE_INDEX for labels in train["labels"])  # the prompt and history are not
