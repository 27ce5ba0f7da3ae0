# gpupipe -- two commands on a fresh machine:
#   make demo   create .venv, install everything, run dedup on the embedded default dataset
#   make test   same install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch.  A GPU node installs its own (see conda-env.yml / the cuda extras).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev
FASHION_MNIST := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install demo test test-gpu bench data clean

install: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# Real data for tests and benchmarks: Debian's Fashion-MNIST package (70,000 images, IDX).
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	( $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist ) ) \
	|| { echo "could not install Debian's dataset-fashion-mnist (needed by tests and benchmarks)"; exit 1; }

demo: install
	$(BIN)/gpupipe demo --out demo

test: install
	$(BIN)/python -m pytest -q

# On a GPU node (with EXTRAS=cuda12,dev or cuda13,dev): only the gpu-marked tests.
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

bench: install
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r benchmarks/requirements-nodeps.txt
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_neighbors.py --max-distance 8

clean:
	rm -rf $(VENV) demo .pytest_cache
