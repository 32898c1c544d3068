"""The DAG's promise, checked with DVC itself: a change to the user's own data under data/raw/ re-runs
ingest (and so what follows); the same bytes, nothing. (A whole DAG re-run: test_pipeline_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import make_project, write_sentiment_tsv
from helpers import changed_stages, commit, sh


@pytest.fixture
def ingested(tmp_path: Path, tiny_model: Path) -> Path:
    """A git + DVC project whose ingest stage ran under `dvc repro` and was committed."""
    root = make_project(tmp_path / "project", write_sentiment_tsv(tmp_path / "reviews.tsv"), tiny_model, repo=True)
    sh(root, "dvc", "repro", "ingest")
    commit(root, "ingested")
    assert "ingest" not in changed_stages(root)  # nothing changed: ingest is up to date
    return root


def test_editing_a_row_of_the_data_file_re_runs_ingest(ingested: Path) -> None:
    data_file = ingested / "data" / "raw" / "reviews.tsv"
    data_file.write_text(data_file.read_text() + "999\t2.5\ta late and lovely addition\r\n")
    assert "ingest" in changed_stages(ingested)


def test_removing_a_row_of_the_data_file_re_runs_ingest(ingested: Path) -> None:
    data_file = ingested / "data" / "raw" / "reviews.tsv"
    data_file.write_text("".join(data_file.read_text().splitlines(keepends=True)[:-1]))
    assert "ingest" in changed_stages(ingested)


def test_a_file_added_to_the_data_folder_re_runs_ingest(ingested: Path) -> None:
    (ingested / "data" / "raw" / "more.tsv").write_text("1\t1.0\tanother fine film\r\n")
    assert "ingest" in changed_stages(ingested)


def test_a_new_mtime_on_the_same_bytes_re_runs_nothing(ingested: Path) -> None:
    (ingested / "data" / "raw" / "reviews.tsv").touch()
    assert "ingest" not in changed_stages(ingested)  # the stages after it never ran here: listed as missing
