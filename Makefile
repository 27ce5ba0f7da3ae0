# gpupipe -- two commands on a fresh machine:
#   make demo   create .venv, install everything, curate the embedded default dataset
#   make test   same install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch.  A GPU node installs its own (see conda-env.yml / the cuda extras).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev
FASHION_MNIST := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install demo test test-gpu bench data clean screenshots

install: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# System packages from Debian: real data for tests and benchmarks (Fashion-MNIST,
# 70,000 images, IDX) and Chromium, the headless browser the report test renders in.
APT_PACKAGES := dataset-fashion-mnist chromium
CHROMIUM := /usr/bin/chromium
data: $(FASHION_MNIST) $(CHROMIUM)
$(FASHION_MNIST) $(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	( $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null 2>&1 || \
	  ( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) ) ) \
	|| { echo "could not install Debian's $(APT_PACKAGES) (needed by tests and benchmarks)"; exit 1; }

demo: install
	$(BIN)/gpupipe demo --out demo

test: install
	$(BIN)/python -m pytest -q

# On a GPU node (with EXTRAS=cuda12,dev or cuda13,dev): only the gpu-marked tests.
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# The README's pictures of the review page, as the browser test takes them.
screenshots: install
	GPUPIPE_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/test_review_page.py -k "keyboard or group"

bench: install
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r benchmarks/requirements-nodeps.txt
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_neighbors.py --max-distance 8

clean:
	rm -rf $(VENV) demo .pytest_cache
