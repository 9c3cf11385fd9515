# One entry point for people and CI. `make test` builds .venv from scratch if needed and runs the suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch==2.13.0 is the CPU wheel this project's machines carry; the package itself does not pin torch.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[transformers,langchain,litellm,dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/guardrails-plugin demo --tiny

bench: venv
	$(BIN)/python benchmarks/engine_bench.py

lint: venv
	$(BIN)/ruff check guardrails_plugin tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
