# Two commands do all the set-up on a fresh machine:
#   make run PROMPT="a lighthouse at dawn"   install everything, generate images locally
#   make test                                install what the tests need, run them all
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= a watercolor painting of a lighthouse at dawn
IMAGES ?= 4
ARGS ?=

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-ml: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[ml]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $@

# Pretrained weights are fetched once into the shared cache (skipped for dry-run / random).
run: $(VENV)/.installed-ml
	@case "$(ARGS)" in *dry-run*|*random*) ;; *) $(BIN)/sdgen weights status --model sd-v1 >/dev/null || $(BIN)/sdgen weights fetch --model sd-v1 ;; esac
	$(BIN)/sdgen run --prompt "$(PROMPT)" --images $(IMAGES) $(ARGS)

test: $(VENV)/.installed-test
	scripts/system-packages.sh
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
