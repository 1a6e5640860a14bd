# Set-up from nothing: a virtual environment with torch, then fastad built in place.
#   make test    build everything, run the test suite
#   make demo    build everything, run the demo
#   make bench   build everything, run the pytest-benchmark suites into benchmarks/rows/bench.jsonl
#                (benchmarks/runner.py bench; `runner.py render` then rewrites the tables)
#   make fuzz    build everything, fuzz the image reader, checkpoint loader and spec parser
#                (FUZZ_EXAMPLES inputs each, default 100000: tests/test_fuzz.py made long)
#   make gpu-check  on a GPU machine with a CUDA torch already installed (PYTHON, no venv): build
#                for this GPU only with all cores, CUDA tests, sanitizers, GPU benchmarks,
#                throughput; one Markdown report in REPORT_DIR (benchmarks/gpu_check.py)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
MAX_JOBS ?= 2
export MAX_JOBS
REPORT_DIR ?= gpu-report
FUZZ_EXAMPLES ?= 100000

BIN := $(VENV)/bin
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h') setup.py pyproject.toml

.PHONY: test demo bench fuzz install clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/pip install --quiet setuptools wheel ninja
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	touch $@

# --no-build-isolation: build against the torch installed above, not a freshly downloaded one.
$(VENV)/.fastad-installed: $(VENV)/.torch-installed $(SOURCES)
	$(BIN)/pip install --no-build-isolation -e ".[test,bench,ray,anomalib,report,deploy]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.fastad-installed

test: install
	$(BIN)/fastad info    # the log names the CPU, its vector extensions and the kernel each op runs
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/fastad demo

bench: install
	$(BIN)/python benchmarks/runner.py bench

fuzz: install
	FASTAD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --report-dir $(REPORT_DIR)

clean:
	rm -rf $(VENV) build fastad/*.so *.egg-info
