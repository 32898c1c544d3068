"""docs/benchmarks.md is generated from reports/benchmarks/*.json by benchmarks/docs_page.py, never typed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import REPO, benchmark_module


def docs_page():  # noqa: ANN201 (a module)
    return benchmark_module("docs_page")


def test_the_benchmarks_page_is_what_the_committed_results_give() -> None:
    page = docs_page()
    assert (REPO / "docs" / "benchmarks.md").read_text() == page.render(), (
        "docs/benchmarks.md is stale: run python benchmarks/docs_page.py"
    )


def test_a_changed_result_changes_the_page_and_check_says_it_is_stale(tmp_path: Path) -> None:
    page = docs_page()
    results = tmp_path / "benchmarks"
    shutil.copytree(REPO / "reports" / "benchmarks", results)
    methods = json.loads((results / "methods.json").read_text())
    methods["rows"][0]["test_accuracy"] = 0.1234
    (results / "methods.json").write_text(json.dumps(methods))
    changed = page.render(results)
    assert changed != page.render() and "| 0.1234 |" in changed
    # every result's provenance is on the page, read from its file
    for file in sorted(results.glob("*.json")):
        result = json.loads(file.read_text())
        assert f"## {file.stem}" in changed and f"`{result['command']}`" in changed and result["date"] in changed
