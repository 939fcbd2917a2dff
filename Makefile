# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench gpu-wheels install clean

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

## The test suite (CPU only, no downloads; Chromium from the OS packages for the HTML report's test),
## after ruff's lint and format check (configured in pyproject.toml). Two pytest workers
## (pytest-xdist) with one intra-op thread per process: most of the suite's time is subprocesses
## (fits, loader workers, ranks) starting up and waiting on each other, which two workers overlap
## on 2 cores (the whole suite: 368 s this way, 635 s in one process).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash tools/install_chromium.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

## Speed and memory ratios of the adapters and of the data loader.
bench: $(STAMP)
	$(PY) benchmarks/adapters.py
	$(PY) benchmarks/dataloader.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/generate.py --shape cpu-3b-width

## Wheels (Python 3.12, pinned to this .venv's versions) of what the lent GPU machines' image lacks,
## for benchmarks/gpu_run.sh there: the device call carries .whl (see docs/adapters.md).
GPU_WHEELS := webdataset braceexpand jsonargparse docstring_parser typeshed_client omegaconf nltk defusedxml
gpu-wheels: $(STAMP)
	rm -rf .whl
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
		$$($(PY) -c "from importlib.metadata import version; print(*(f'{n}=={version(n)}' for n in '$(GPU_WHEELS)'.split()))") \
		2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	ls .whl

clean:
	rm -rf $(VENV) .pytest_cache
