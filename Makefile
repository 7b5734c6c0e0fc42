# Two entry points: `make serve` (install and run the daemon), `make test` (install and run all tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source: use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# llama.cpp is built for this CPU's vector units, but never with AMX: where a CPU reports AMX under a
# hypervisor that does not hand out its tile state (Firecracker does not), llama.cpp's -march=native
# build dies with SIGILL in ggml_backend_amx_mul_mat at the first matrix of a real-width model.
# It is built without pip's cache: a wheel cached from another build (native, AMX) would be reused.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
ggml_if = $(if $(filter $(1),$(CPU_FLAGS)),-DGGML_$(2)=ON)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(call ggml_if,avx,AVX) $(call ggml_if,avx2,AVX2) \
	$(call ggml_if,fma,FMA) $(call ggml_if,f16c,F16C) $(call ggml_if,bmi2,BMI2) \
	$(call ggml_if,avx_vnni,AVX_VNNI) $(call ggml_if,avx512f,AVX512) \
	$(call ggml_if,avx512vbmi,AVX512_VBMI) $(call ggml_if,avx512_vnni,AVX512_VNNI) \
	$(call ggml_if,avx512_bf16,AVX512_BF16)

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

$(VENV)/.llama: | $(VENV)/bin/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir 'llama-cpp-python>=0.3'
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.llama
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/.llama
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

# The dashboard tests drive Debian's Chromium (no browser can be downloaded by a test tool);
# the metrics test runs promtool (Debian's prometheus package) on a scrape.
DEBIAN_TEST_PACKAGES := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/bin/promtool),,prometheus)
browser:
	@if [ -n "$(strip $(DEBIAN_TEST_PACKAGES))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TEST_PACKAGES) >/dev/null; \
	  else echo "note: missing $(DEBIAN_TEST_PACKAGES) (sudo apt-get install them); browser and promtool checks will be skipped"; fi; \
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
