# Two commands do all the set-up on a fresh machine (Python 3.10+ and git needed):
#   make repro   install everything into .venv, then run the pipeline (dvc repro)
#   make test    install everything into .venv, then run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the venv's first on PATH for DVC.
RUN := PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: setup repro test test-slow demo lint

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

setup: $(INSTALLED)

repro: setup
	$(RUN) dvc repro

test: setup
	$(RUN) python -m pytest -m "not slow"

test-slow: setup
	$(RUN) python -m pytest -m slow -rP  # -rP: print the measured figures

demo: setup
	$(RUN) python -m scripts.demo

lint: setup
	$(BIN)/ruff check .
