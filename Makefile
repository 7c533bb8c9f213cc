# Set-up and entry points. `make demo` and `make test` each create the
# virtualenv from the project's own files on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quick

.PHONY: venv demo test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m experiments.reproduce --config experiments/configs/fmnist_quick.py --workdir $(WORKDIR)

test: venv
	$(PY) -m pytest -n 2 -q tests

bench: venv
	$(PY) -m benchmarks.run --quick --out benchmarks/results.json

clean:
	rm -rf $(VENV) runs
