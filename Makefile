# Two commands on a fresh machine: `make demo` (install, then an RL run on the default preset) and
# `make test` (install, then the default test tier). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow install clean

$(BIN)/sirl: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit("sirl needs Python >= 3.10, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/sirl

demo: $(BIN)/sirl
	$(BIN)/sirl train --config demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# pytest's default output: a line per test file with a dot per test and the share of the suite done, so a
# long run never looks hung; the slowest tests are listed at the end.
test: $(BIN)/sirl
	$(BIN)/python -m pytest --durations=5

test-slow: $(BIN)/sirl
	$(BIN)/python -m pytest -m slow --durations=5

clean:
	rm -rf $(VENV) runs
