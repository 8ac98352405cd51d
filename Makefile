# The README's commands. `make serve` installs and serves the embedded model; `make test` installs
# and runs the tests. torch is pinned and installed first: an unpinned torch pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test bench train eval

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,train,bench]'
	touch $@

serve: install
	$(VENV)/bin/canvasd serve --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/canvasd bench

# Builds the dataset when missing, then trains (or resumes) runs/emoji64 for MINUTES of training time.
MINUTES ?= 60
train: install
	$(VENV)/bin/canvasd train --max-minutes $(MINUTES)

eval: install
	$(VENV)/bin/canvasd eval report
