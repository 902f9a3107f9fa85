# edge-agent developer and demo targets. Every target creates the venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; a bare "torch" would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Empty: the demo plays a simulated line. DATA_DIR=DIR plays the CWRU recordings in DIR.
DATA_DIR ?=
# More options for `edge-agent demo`, e.g. DEMO_ARGS="--embedded-broker amqtt --plots runs/demo/plots".
DEMO_ARGS ?=

.PHONY: venv demo test test-fast bench clean

$(BIN)/edge-agent: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/edge-agent

venv: $(BIN)/edge-agent

## demo: broker, agent and a simulated line (or CWRU load 3 with DATA_DIR=...), then the report
demo: venv
	$(BIN)/edge-agent demo $(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(DEMO_ARGS)

## test: the whole test suite (the command CI runs)
test: venv
	$(BIN)/python -m pytest -q -ra

## test-fast: everything but the end-to-end runs
test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not slow"

## bench: speed benchmarks, results as JSON lines (see docs/benchmarks.md)
bench: venv
	$(BIN)/python bench/bench_protonet.py
	$(BIN)/python bench/bench_ingest.py

clean:
	rm -rf $(VENV) runs .pytest_cache
