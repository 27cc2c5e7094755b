# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SOURCES := $(shell find sansio_signal adapters -type f -not -path '*/__pycache__/*') pyproject.toml

# One stamp per install: the demo's (the package with the `rtc` extra: aiortc) and the
# developer's (the `dev` extra: that plus the test and lint toolchain). Both are strict
# editable installs, which link each file that exists at install time (mypy sees it), so
# each is redone whenever a source file is added or changed. The dev install contains
# the demo's, so it refreshes the demo stamp too.
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo serve test lint typecheck install install-demo bench docs

$(DEMO_STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[rtc]' --config-settings editable_mode=strict
	touch $@

$(DEV_STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@ $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)

install: $(DEV_STAMP)

# The main job on an embedded default: a relay on a free loopback port and 4 aiortc
# peers in one room; the full mesh forms and every pair exchanges a message.
demo: install-demo
	$(BIN)/sansio-signal demo

# The relay server alone, on ws://127.0.0.1:8765/ until Ctrl-C.
serve: install-demo
	$(BIN)/sansio-signal serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Every check: lint, types, and the whole test suite.
test: lint typecheck
	$(BIN)/pytest -q

# The documentation site (mkdocs.yml) into site/; any warning (a broken link or
# reference) fails it. tests/test_docs_site.py builds it the same way in `make test`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_relay.py
	$(BIN)/python benchmarks/bench_scaleout.py
	$(BIN)/python benchmarks/bench_client.py
	$(BIN)/python benchmarks/bench_mesh.py
