# Every target creates .venv and installs what it needs: a fresh machine needs only python3.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LINKS  := $(VENV)/.linked
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test lint format bench clean

# A strict editable install: a tree of links to the sources on sys.path, no import hook, so
# an interpreter starts as fast as with a plain install (the default editable install's hook
# costs every interpreter about 20 ms, paid again by every command a test runs).
STRICT := --config-settings editable_mode=strict

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' $(STRICT)
	touch $(STAMP) $(LINKS)

# Edits show through the links at once; a module added or removed needs new ones (a
# folder's time changes when an entry is added or removed).
$(LINKS): $(STAMP) engine cli grammar
	$(PY) -m pip install -qq --no-deps -e . $(STRICT)
	touch $(LINKS)

# Bytecode compiled ahead (quick when up to date): where PYTHONDONTWRITEBYTECODE is set, every
# command a test runs would otherwise compile the whole package again, some 100 ms each.
COMPILE := $(PY) -m compileall -q -j 0 build tests bench

demo: $(LINKS)
	$(PY) -m taskwatcher.cli.demo

test: $(LINKS)
	$(COMPILE)
	$(PY) -m tests.pg_server -- $(PY) -m pytest -q -n 4 --dist worksteal

lint: $(LINKS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(LINKS)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(LINKS)
	$(COMPILE)
	$(PY) -m tests.pg_server -- $(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
