# Two commands do all the set-up on a fresh machine (Python >= 3.11 with its venv module,
# git and make needed; see the README):
#   make repro   install everything into .venv, then run the pipeline (dvc repro)
#   make test    install everything into .venv, then run the test suite
# Optional parts go with EXTRAS, e.g. `make setup EXTRAS="s3 dask"` (see extras/*.txt).
# Pick the interpreter with PYTHON, e.g. `make PYTHON=python3.12 test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the venv's first on PATH for DVC.
RUN := PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1

# --- Which Python builds .venv -------------------------------------------------------------
# Pinned packages (keras, numpy, scikit-learn, kaggle...) require Python >= 3.11; checking
# here, before anything is installed, turns pip's long resolver failure into one line.
#
# PYTHON given explicitly (command line or environment) means "use this one": an existing
# .venv built by another interpreter is rebuilt with it. Without it, an existing .venv keeps
# its own interpreter, so `make PYTHON=python3.12 setup` then `make test` does not silently
# reinstall everything with the default python3 (and works where python3 is too old).
ifneq ($(filter command line environment,$(origin PYTHON)),)
PROBE := $(PYTHON)
else
PROBE := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
endif
GOAL := $(or $(MAKECMDGOALS),setup)
HINT := Install Python 3.11+ (Debian/Ubuntu: apt install python3.11 python3.11-venv), then run: make PYTHON=python3.11 $(GOAL)

# One interpreter start per make run, even when .venv is up to date (a few ms). No output
# at all means the interpreter is missing or does not start (e.g. an uninstalled pyenv shim).
PY_STATE := $(shell $(PROBE) scripts/venv_state.py '$(PROBE)' '$(VENV)' '$(HINT)' 2>/dev/null)
PY_STATE := $(or $(PY_STATE),make needs Python >= 3.11; found no working '$(PROBE)' (not found or does not run). $(HINT))
VENV_ACTION := $(firstword $(PY_STATE))
ifeq ($(filter keep create rebuild,$(VENV_ACTION)),)
# $(error) stops make before any target, with this single line.
$(error $(PY_STATE))
endif

.PHONY: setup repro test test-slow test-scale test-browser demo lint exps plots transcripts FORCE

# Optional parts (a DVC remote's plug-in, Dask, CUDA): extras/NAME.txt, each installed once.
EXTRAS ?=
KNOWN_EXTRAS := $(basename $(notdir $(wildcard extras/*.txt)))
UNKNOWN_EXTRAS := $(filter-out $(KNOWN_EXTRAS),$(EXTRAS))
ifneq ($(UNKNOWN_EXTRAS),)
$(error unknown EXTRAS '$(UNKNOWN_EXTRAS)': choose from $(KNOWN_EXTRAS))
endif
EXTRA_STAMPS := $(foreach extra,$(EXTRAS),$(VENV)/.installed-$(extra))

# Requirements changed: install into the existing .venv (pip only adds what is new).
# Interpreter changed: --clear rebuilds it, since compiled packages belong to one Python.
$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml $(if $(filter rebuild,$(VENV_ACTION)),FORCE)
ifeq ($(VENV_ACTION),rebuild)
	@echo "Rebuilding $(VENV) with $(PYTHON): it was built by $(wordlist 2,99,$(PY_STATE))"
	$(PYTHON) -m venv --clear $(VENV)
else ifeq ($(VENV_ACTION),create)
	$(PYTHON) -m venv $(VENV)
endif
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	# the finetune package itself, editable, with its `predict` command
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-%: extras/%.txt constraints.txt $(INSTALLED)
	$(BIN)/python -m pip install --quiet -r $< -c constraints.txt
	touch $@
$(VENV)/.installed-scale-tests: extras/s3.txt extras/dask.txt

setup: $(INSTALLED) $(EXTRA_STAMPS)

repro: setup
	$(RUN) dvc repro

# Two processes: a test file, or the files sharing a costly run, stays in one (tests/conftest.py).
test: setup
	$(RUN) python -m pytest -m "not slow and not scale and not browser" -n 2 --dist loadgroup

# The exports' checks (tests/slow/test_export.py) run each format on its own runtime.
test-slow: setup $(VENV)/.installed-export
	$(RUN) python -m pytest -m slow -rP  # -rP: print the measured figures

# Scaling out on loopback: S3 remote, queued grid, Dask features, 2-worker training.
test-scale: setup $(VENV)/.installed-scale-tests
	$(RUN) python -m pytest -m scale -rP

# The plots page (`make plots`) opened in headless Chromium: every chart drawn, offline.
# Debian's Chromium, and npm (which fetches Vega's scripts once) where there is none,
# installed with apt (as root, as CI runs).
CHROMIUM := /usr/bin/chromium
NPM := $(or $(shell command -v npm),/usr/bin/npm)
$(CHROMIUM) /usr/bin/npm:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(notdir $@)

test-browser: setup $(VENV)/.installed-browser-tests $(CHROMIUM) $(NPM)
	$(RUN) python -m pytest -m browser -rP

# REPLACE=1: delete an earlier build/demo even if it holds experiments.
demo: setup
	$(RUN) python -m scripts.demo $(if $(REPLACE),--replace)

lint: setup
	$(BIN)/ruff check .

# The README's and docs' console transcripts, run in a fresh demo project (needs ../shared)
# and compared with what they show; ARGS=--update rewrites them from the run.
transcripts: setup
	$(RUN) python -m scripts.transcripts $(ARGS)

# Every experiment's changed params and headline metrics, within 120 columns, of the DVC
# project in DIR (this one by default; e.g. `make exps DIR=build/demo` after `make demo`);
# more options of `dvc exp show` with ARGS, e.g. ARGS="--sort-by lr".
# Module and data deps, the training curves' last values and the per-class scores are left
# out; `dvc exp show` shows everything.
DIR ?= .
EXPS_DROP := ^(Created|Executor|finetune/.*|stages/.*|data/.*|models/.*|step|train\..*|eval\..*|.*\.(precision|recall|f1)|images.*|best_epoch|kept_epoch|unlabelled|unreadable)$$
exps:
	@cd '$(DIR)' && $(RUN) dvc exp show --only-changed --drop '$(EXPS_DROP)' --precision 4 $(ARGS)

# `dvc plots show`'s page of the DVC project in DIR, in DIR/dvc_plots, with Vega's scripts
# beside it instead of on a CDN, so that it renders offline (scripts/plots_page.py; the
# scripts are fetched once with npm into build/vega).
plots: setup
	@$(RUN) python -m scripts.plots_page --project '$(DIR)'

# The naive reference recipe against the pipeline, timed side by side on the same synthetic
# photos (see scripts/bench.py); sizes and recipe by ARGS, e.g.
#   make bench ARGS="--train 21000 --test 12500 --repeats 1"
.PHONY: bench
bench: setup
	$(RUN) python -m scripts.bench $(ARGS)

# Each export format measured on this CPU: file size, load time, one-image latency,
# throughput at batch 32, the runtime's install size (docs/deploy.md); ARGS="--model FILE"
# measures a trained model instead of the default network with random weights.
.PHONY: bench-export
bench-export: setup $(VENV)/.installed-export
	$(RUN) python -m scripts.bench_export $(ARGS)
