# Two entry points: `make serve` (install and run the daemon), `make test` (install and run all tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source: use both cores; pip caches the wheel it builds.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: serve test install install-test browser lint bench wheel clean

serve: install
	$(BIN)/lawchatd serve

test: install-test browser
	$(BIN)/ruff check lawchatd tests bench
	$(BIN)/pytest

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

# The dashboard tests drive Debian's Chromium (no browser can be downloaded by a test tool).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium is missing (sudo apt-get install chromium); browser tests will be skipped"; fi; \
	fi

lint: install-test
	$(BIN)/ruff check lawchatd tests bench
	$(BIN)/ruff format --check lawchatd tests bench

bench: install-test
	@command -v aria2c >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq aria2 >/dev/null; }
	$(BIN)/python bench/run.py
	$(BIN)/python bench/swap_memory.py
	$(BIN)/python bench/internet.py

# An installable package (the dashboard inside) for `pip install dist/lawchatd-*.whl`.
wheel: install
	$(BIN)/pip wheel --no-deps -w dist .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache test-artifacts
