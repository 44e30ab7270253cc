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

# Two test processes (pytest-xdist), a whole file to each at a time so its module-scoped training runs once;
# files in the order tests/conftest.py sorts them (most slow tests first).
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST)

# Everything but the tests marked slow (over ~7 s: several processes, SIGKILL, extra end-to-end runs):
# for a developer's loop; CI runs `make test`.
test-fast: install
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
