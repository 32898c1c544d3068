"""Every params block of the README and the docs is a valid change to params.yaml: its keys exist and its
values pass the same checks a run makes (the README's recipes are also run through the stages,
tests/stages/test_recipes.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO, dotted
from pipeline.params import load_params

# Pages that record past runs as they were, or are generated from JSON: not instructions to follow.
RECORDS = {"benchmarks-history.md", "testing-history.md", "benchmarks.md"}
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in RECORDS)]


def yaml_blocks(page: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


BLOCKS = [(page, i, block) for page in PAGES for i, block in enumerate(yaml_blocks(page))]


@pytest.mark.parametrize(("page", "index", "block"), BLOCKS, ids=[f"{p.name}#{i}" for p, i, _ in BLOCKS])
def test_every_params_block_in_the_docs_is_a_valid_change_to_params_yaml(page: Path, index: int, block: str) -> None:
    change = yaml.safe_load(block)
    assert isinstance(change, dict), f"{page.name} block {index} is not a mapping of params sections"
    load_params(REPO / "params.yaml", overrides=dotted(change))  # raises naming the key, as a run would


def test_the_docs_show_params_blocks_at_all() -> None:
    assert len(BLOCKS) >= 4 and any(page.parent.name == "docs" for page, _, _ in BLOCKS)
