"""Small helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stages.errors import EXIT_USER_ERROR


def set_params(root: Path, changes: dict[str, object]) -> None:
    """Change dotted keys of the project's params.yaml: {"finetune.learning_rate": 0.1}."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def expect_user_error(main: Callable[[], None], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a stage's main, assert it exits with the user-error code, and return its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err
