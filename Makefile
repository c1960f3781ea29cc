# recstream: the two commands of the README.
#   make demo   set up .venv, export the encoder, run the whole system on embedded defaults
#   make test   set up .venv, export the encoder, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint models clean sysdeps

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

# espeak-ng and sox make the real speech and tones the audio tests listen to (Debian packages).
# Installed when missing and we may (root or sudo); otherwise those tests skip and say why.
sysdeps:
	@if command -v espeak-ng >/dev/null && command -v sox >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq espeak-ng sox >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng sox >/dev/null 2>&1)) || \
	  echo "could not install espeak-ng/sox: the speech/tone tests will skip"; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get install -y -qq espeak-ng sox >/dev/null 2>&1 || \
	  echo "could not install espeak-ng/sox: the speech/tone tests will skip"; \
	else echo "espeak-ng/sox absent and not installable here: the speech/tone tests will skip"; fi

test: models sysdeps
	$(BIN)/python -m pytest -ra --tb=short

lint: $(BIN)/recstream
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
