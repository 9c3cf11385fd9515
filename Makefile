# One entry point for people and CI. `make test` builds .venv from scratch if needed and runs the suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv sysdeps test mutations demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch==2.13.0 is the CPU wheel this project's machines carry; the package itself does not pin torch.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[transformers,langchain,litellm,dev]'
	touch $@

venv: $(VENV)/.installed

# System packages the tests use: Debian's Chromium + ChromeDriver for the review page's browser tests
# (nothing downloads a browser). PostgreSQL 15 binaries are expected at /usr/lib/postgresql/15 (the
# audit tests start a throwaway server on 127.0.0.1 themselves).
sysdeps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "sysdeps: run as root or: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; \
	fi

test: venv sysdeps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q
	$(MAKE) mutations

# Break each safety property on purpose and prove a test notices (tests/mutations/).
mutations: venv
	$(BIN)/python tests/mutations/run_mutations.py

demo: venv
	$(BIN)/guardrails-plugin demo --tiny

bench: venv
	$(BIN)/python benchmarks/engine_bench.py

lint: venv
	$(BIN)/ruff check guardrails_plugin tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
