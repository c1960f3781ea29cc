# recstream: the two commands of the README.
#   make demo   set up .venv, export the encoder, run the whole system on embedded defaults
#   make test   set up .venv, export the encoder, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint models clean

$(BIN)/recstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU build) is pinned in the "export" extra: the worker never imports it.
	$(BIN)/pip install --quiet -e '.[export,test,dev,bench]'
	touch $@

models: $(BIN)/recstream
	$(BIN)/recstream models export

demo: models
	$(BIN)/recstream demo

test: models
	$(BIN)/python -m pytest -ra

lint: $(BIN)/recstream
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
