# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench install clean

install: $(STAMP)

# pip warns about every package missing from this machine's local package mirrors; that noise is dropped.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

## The main job on the offline default. Until the training loop lands, the adapter benchmark.
demo: $(STAMP)
	$(PY) benchmarks/adapters.py

## The test suite (CPU only, no downloads).
test: $(STAMP)
	$(PY) -m pytest -q

bench: demo

clean:
	rm -rf $(VENV) .pytest_cache
