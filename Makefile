# recstream: the two commands of the README.
#   make demo   set up .venv, export the encoders, resolve Kafka's jars, run the whole system
#   make test   the same set-up, then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint models kafka clean sysdeps

$(BIN)/recstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	# torch==2.13.0 is pinned in the "export" extra (the worker never imports it). On Linux x86-64
	# PyPI serves only its CUDA build: with the nvidia-* wheels it pulls, the venv is ~6.4 GB and
	# the install peaks near 10 GB of disk. --no-cache-dir: no second copy in pip's cache.
	$(BIN)/pip install --quiet --no-cache-dir -e '.[export,test,dev,bench]'
	touch $@

models: $(BIN)/recstream
	$(BIN)/recstream models export

demo: models kafka
	$(BIN)/recstream demo

# Debian packages, installed when missing and we may (root or sudo):
#   Java 17+ and Maven run the local Apache Kafka broker (its jars come from Maven Central);
#   espeak-ng and sox make the real speech and tones the audio tests listen to (without them
#   those tests skip and say why).
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || (sudo -n true 2>/dev/null && echo "sudo apt-get"))
sysdeps:
	@need=""; \
	command -v java >/dev/null || need="$$need openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || need="$$need maven"; \
	command -v espeak-ng >/dev/null || need="$$need espeak-ng"; \
	command -v sox >/dev/null || need="$$need sox"; \
	if [ -z "$$need" ]; then :; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  echo "installing Debian packages:$$need"; \
	  $(APT) install -y -qq $$need >/dev/null 2>&1 || \
	  ($(APT) update -qq >/dev/null 2>&1 && $(APT) install -y -qq $$need >/dev/null 2>&1) || \
	  echo "could not install$$need"; \
	else echo "missing and not installable here:$$need (Java and Maven are required)"; fi

# Apache Kafka's jars, resolved once with Maven into ~/.cache/recstream/kafka.
kafka: $(BIN)/recstream sysdeps
	$(BIN)/recstream broker --prepare

test: models sysdeps kafka lint
	$(BIN)/python -m pytest -ra --tb=short

# mypy cannot follow the editable install's import hook (streams/, encoders/ and ranking/ are
# installed as recstream.streams, ...), so it checks a tree of links laid out as installed.
TYPED := build/typecheck
lint: $(BIN)/recstream
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPED) && mkdir -p $(TYPED)/recstream
	for f in recstream/*; do ln -s "$(CURDIR)/$$f" $(TYPED)/recstream/; done
	for d in streams encoders ranking; do ln -s "$(CURDIR)/$$d" $(TYPED)/recstream/$$d; done
	cd $(TYPED) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p recstream

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
