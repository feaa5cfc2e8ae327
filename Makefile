# `make demo` and `make test` work on a fresh machine with only Python 3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: install install-cuda demo test deploy bench bench-quick clean

$(BIN)/ocrfleet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[cpu,test]"
	touch $@

install: $(BIN)/ocrfleet

# GPUs with onnxruntime-gpu from PyPI, in place of the CPU extra (a separate venv: VENV=.venv-cuda). The ONNX
# models' package (rapidocr-onnxruntime) pulls CPU onnxruntime, whose files would shadow onnxruntime-gpu's.
install-cuda:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[cuda,test]"
	$(BIN)/python -m pip uninstall -y onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install --no-deps "onnxruntime-gpu>=1.21"
	$(BIN)/ocrfleet devices

# The main job on the bundled sample pages: 2 CPU workers, Prefect's local (ephemeral) API.
demo: install
	mkdir -p $(dir $(DEMO_OUT))  # ocrfleet creates only the run dir itself, never its parents
	$(BIN)/ocrfleet run samples/pages --output $(DEMO_OUT) --devices cpu:2
	@echo "results: $(DEMO_OUT)/results.jsonl  summary: $(DEMO_OUT)/summary.json"

test: install
	$(BIN)/python -m pytest tests

# Pool + nightly/adhoc deployments on the Prefect server at PREFECT_API_URL (see docs/prefect.md).
deploy: install
	$(BIN)/ocrfleet deploy

# Benchmarks: figures beside their targets in benchmarks/RESULTS.md (full: about an hour on 2 cores).
bench: install
	$(BIN)/python -m benchmarks.run

bench-quick: install
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) out
