# Two commands do everything on a fresh Debian machine:
#   make demo   set up (venv, pinned packages, Fashion-MNIST) and run the main job
#   make test   set up and run the test suite (CI runs this through .ci/run)
# Both are idempotent: the environment is rebuilt only when requirements/lock.txt or
# pyproject.toml change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vitprune-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup data clean

demo: setup data
	$(PY) -m vitprune.demo

test: setup data
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt exists; elsewhere the loader's
# error says how to get the files and pass --data-dir.
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: no apt-get here; see README (Data) to get Fashion-MNIST by hand"; fi

clean:
	rm -rf $(VENV) runs
