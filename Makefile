# The two commands of the README. Each sets itself up on first use (a venv in .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: main test test-fast venv

$(BIN)/rtune: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: on this machine kind that is the CPU build from local disk
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/rtune

venv: $(BIN)/rtune

# The main job: the study on real text (rtune demo: two 1-rank jobs at once) -> runs/demo/report.md
main: venv
	$(BIN)/rtune demo --out runs/demo

# The whole test suite (CI runs exactly this)
test: venv
	$(BIN)/python -m pytest -q -ra --durations=25

# The fast subset, for development
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"
