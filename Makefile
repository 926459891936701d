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

test: $(BIN)/sirl
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/sirl
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
