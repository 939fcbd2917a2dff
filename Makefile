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

## The main job on the offline default: synthetic MAU-Set, tiny base, stage 1, stage 2 (AMoE-LoRA), test.
demo: $(STAMP)
	$(PY) tools/demo.py

## The test suite (CPU only, no downloads).
test: $(STAMP)
	$(PY) -m pytest -q

## Speed and memory ratios of the adapters and of the data loader.
bench: $(STAMP)
	$(PY) benchmarks/adapters.py
	$(PY) benchmarks/dataloader.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/generate.py --shape cpu-3b-width

clean:
	rm -rf $(VENV) .pytest_cache
