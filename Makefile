# The two commands of the README:  `make repro` (the pipeline)  and  `make test` (the tests).
# Both create the virtual environment first if it is missing or the requirements changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test test-e2e setup clean-venv

setup: $(STAMP)

# torch first, pinned, so the dependency range in pyproject.toml is already met and pip does not pick
# a different build; constraints.txt locks every other package to the versions this was tested with.
$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/torch.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	touch $@

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Lint and format check first (seconds), then the first tier of tests (budget: 8 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

# The second tier: multi-process end-to-end runs (DVC's queue, torchrun, whole-DAG dvc repro, HTTP servers).
test-e2e: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
