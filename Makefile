# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install imgpipe into it (editable) the first time.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/imgpipe run classify

test: install
	$(BIN)/python -m pytest

# Everything but the tests marked slow (several processes, SIGKILL): for a developer's loop; CI runs `make test`.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
