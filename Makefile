# Two commands do all the set-up on a fresh machine:
#   make run PROMPT="a lighthouse at dawn"   install everything, generate images locally
#   make test                                install what the tests need, lint, run them all (CI)
# and for everyday work:
#   make check                               lint + the fast tests on 2 processes (about 2 min)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= a watercolor painting of a lighthouse at dawn
IMAGES ?= 4
ARGS ?=

.PHONY: run test check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-ml: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[ml]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $@

# The prompt reaches sdgen through the environment, never through make or shell expansion:
# `make run PROMPT='a fox costs $5'` keeps its `$5` (and quotes, backquotes) as typed.
export SDGEN_MAKE_PROMPT := $(value PROMPT)

# Pretrained weights are fetched once into the shared cache (skipped for dry-run / random).
# Offline, the run ends with `weights status`'s list of missing files and the two ways to see
# the pipeline work without them, instead of a bare download error.
run: $(VENV)/.installed-ml
	@case "$(ARGS)" in *dry-run*|*random*) ;; *) \
	  if ! $(BIN)/sdgen weights status --model sd-v1 > $(VENV)/.weights-status 2>&1 \
	     && ! $(BIN)/sdgen weights fetch --model sd-v1; then \
	    cat $(VENV)/.weights-status; \
	    echo "make run: the pretrained sd-v1 weights are not on this machine (missing files above) and could not be downloaded: connect and run \`make run\` again, copy the files where listed, or see the pipeline work offline with \`make run ARGS=\"--weights random\"\` (the real model, random weights: noise pictures) or \`make run ARGS=\"--engine dry-run\"\` (no model: test pictures, in seconds)" >&2; \
	    exit 2; \
	  fi ;; esac
	$(BIN)/sdgen run --prompt "$$SDGEN_MAKE_PROMPT" --images $(IMAGES) $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sdgen tests benchmarks
	$(BIN)/ruff format --check sdgen tests benchmarks

# Two processes: most slow tests wait on daemons, workers and servers, not on the CPU.
# Tests sharing a session fixture (one Slurm, one model build) stay in one process
# (tests/conftest.py, SHARED_FIXTURE_GROUPS).
test: lint
	scripts/system-packages.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS)

# The fast lane: no `slow` marks (no real model, MLflow server, Slurm or kill -9 trials).
check: lint
	$(BIN)/python -m pytest -q -m "not slow" -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
