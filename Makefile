# Two entry points (see README): `make run` (serve the built-in default) and `make test`.
# Both create .venv and install torch==2.13.0 first (the CPU build where one
# is on disk), then the project, so pip never pulls a CUDA torch.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

.PHONY: install test run lint bench
install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

test: install lint
	$(PY) -m pytest

# the main job: index the built-in collection with the shipped checkpoint (once), serve
run: install
	$(VENV)/bin/sugar serve

bench: install
	$(VENV)/bin/sugar bench kernels --json bench-kernels.json
