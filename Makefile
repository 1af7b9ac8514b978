# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=

.PHONY: setup demo test test-slow test-slurm bench tables reproduce-mini reproduce-real data clean

setup: $(STAMP)

# torchaudio 2.9 needs torch 2.9.1: install torch/torchvision first, then torchaudio,
# then the project itself (editable, with test extras). Re-runs only when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.9.1 torchvision==0.24.1
	$(BIN)/pip install -q torch==2.9.1 'torchaudio==2.9.*'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/qexp train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# tests/test_slurm.py on a single-node Slurm that its fixture starts and stops (scripts/slurm_local.sh);
# installs slurm-wlm and munge through apt when missing (as root). Not starting is a failure here.
test-slurm: setup
	@t0=$$(date +%s); rc=0; \
	scripts/slurm_local.sh install && \
	QEXP_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py $(ARGS) || rc=$$?; \
	echo "make test-slurm: $$(( $$(date +%s) - t0 )) s"; exit $$rc

bench: setup
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/qexp bench $(ARGS)

tables: setup
	$(BIN)/qexp tables $(ARGS)

reproduce-mini: setup
	$(BIN)/qexp reproduce --tier mini $(ARGS)

# The real tier: Fashion-MNIST (`make data` first); about 2 h on 2 CPU cores, resumable.
reproduce-real: setup
	$(BIN)/qexp reproduce --tier real $(ARGS)

# Fashion-MNIST from Debian's dataset-fashion-mnist (the real tier's data, ~30 MB): apt-get as
# root, else through sudo; `apt-get update` only when the first install fails.
DATA_PKG := dataset-fashion-mnist
data:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "make data: neither root nor sudo; ask an administrator to run: apt-get install -y $(DATA_PKG)" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make data: no apt-get here; put the four Fashion-MNIST idx .gz files in a folder and pass dataset.root=DIR" >&2; exit 1; fi; \
	$$SUDO apt-get install -y $(DATA_PKG) || { $$SUDO apt-get update && $$SUDO apt-get install -y $(DATA_PKG); } || \
	{ echo "make data: apt-get could not install $(DATA_PKG) (see above)" >&2; exit 1; }

clean:
	rm -rf runs outputs multirun .pytest_cache
