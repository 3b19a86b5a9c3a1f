# Two commands do everything on a fresh machine:
#   make run    set up (no torch needed) and open tunescope on the bundled demo runs
#   make test   set up with the dev, train, loggers' and scale extras (and the system's
#               chromium and Java when missing), then lint and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch, installed before the [train] extra and the loggers'
# ([lightning], [torchtune]) so that pip never resolves a bare "torch"
# requirement to a multi-GB CUDA build: from a local wheel when pip's
# find-links hold one, else from PyTorch's CPU wheel index.
# For a GPU build: make setup-dev TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_VERSION   ?= 2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
RUNS   ?= fixtures/runs
# The chart library inlined into HTML reports (tunescope/report/vendor); `make vendor` refreshes it.
UPLOT_VERSION ?= 1.6.32

# What the tests need from the system: the browser the HTML report's tests open
# (Debian's chromium, driven by Playwright) and the Java runtime pyspark starts.
# Installed with apt-get when missing and this is root; otherwise named, once.
SYSTEM_NEEDS := chromium:chromium java:openjdk-17-jre-headless

.PHONY: run test test-fast lint system-deps links fixtures sweeps bench bench-summary clean setup setup-dev torch vendor

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# setuptools warns that the repository's own tunescope/ folder could shadow the
# editable package: it is the package's source, so the warning is noise here.
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation"

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(EDITABLE_QUIET) $(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory torch
	$(EDITABLE_QUIET) $(BIN)/python -m pip install --quiet -e ".[dev,train,lightning,torchtune,scale]"
	@touch $@ $(VENV)/.core

torch: $(BIN)/python
	@if $(BIN)/python -m pip install --quiet --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
		echo "tunescope: installed torch $(TORCH_VERSION) from a local wheel (pip's find-links)"; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "tunescope: installing torch $(TORCH_VERSION) from $(TORCH_INDEX_URL) (CPU build unless you set TORCH_INDEX_URL)"; \
		$(BIN)/python -m pip install --quiet --index-url "$(TORCH_INDEX_URL)" \
			--extra-index-url https://pypi.org/simple "torch==$(TORCH_VERSION)"; \
	fi

setup: $(VENV)/.core
setup-dev: $(VENV)/.dev links

# Static tools (mypy, pyright, editors) cannot follow pyproject's package-dir mapping
# through the editable install's import hook: links tunescope/ingest -> ../ingest (and
# detectors, train, tui; git-ignored) give the source tree the wheel's shape for them.
links:
	@for d in ingest detectors train tui; do [ -e tunescope/$$d ] || ln -s ../$$d tunescope/$$d; done

# After the TUI exits, the one line to use next; the TUI's own exit code is kept.
run: $(VENV)/.core
	@$(BIN)/tunescope tui $(RUNS); rc=$$?; \
	echo "next: source $(VENV)/bin/activate, then: tunescope analyze YOUR_RUNS_DIR"; \
	exit $$rc

lint: $(VENV)/.dev links
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# loadgroup: the tests of one xdist_group share a worker (tests/integration/test_scale_out.py
# starts one Spark JVM and one Ray for its module, not one per worker)
test: system-deps lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

system-deps:
	@missing=""; for need in $(SYSTEM_NEEDS); do command -v $${need%%:*} >/dev/null 2>&1 || missing="$$missing $${need#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing (install them: the browser and Spark tests fail without them)" >&2; exit 1; fi; \
	fi

# the inner loop: tests/unit (detector cases included), no subprocess, no training,
# no browser, no TUI
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -n 2 -q tests/unit

fixtures: $(VENV)/.dev
	$(BIN)/python -m tunescope.train.fixtures $(RUNS)

# the sibling sweeps of TS501 and `tunescope compare` (fixtures/sweeps: 12 runs of 150 steps)
sweeps: $(VENV)/.dev
	$(BIN)/python -m tunescope.train.sweeps fixtures/sweeps --jobs 2

bench: $(VENV)/.dev
	@for b in bench/*.py; do [ $$b = bench/summary.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

# one table of every speed figure against its same-run baseline (QUICK=1: small corpora, ~5 min)
bench-summary: $(VENV)/.dev
	@$(BIN)/python bench/summary.py $(if $(QUICK),--quick)

vendor:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null \
	  && tar xzf uplot-$(UPLOT_VERSION).tgz && cd - >/dev/null \
	  && cp $$tmp/package/dist/uPlot.iife.min.js tunescope/report/vendor/uplot.min.js \
	  && cp $$tmp/package/dist/uPlot.min.css tunescope/report/vendor/uplot.min.css \
	  && cp $$tmp/package/LICENSE tunescope/report/vendor/uplot.LICENSE \
	  && echo "uplot $(UPLOT_VERSION)" > tunescope/report/vendor/VERSION && rm -rf $$tmp
	@cat tunescope/report/vendor/VERSION

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
