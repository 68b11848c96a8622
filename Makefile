# The two commands of the README: `make demo` runs the example stack, `make test` runs the suite.
# Both create .venv on first use and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs bench bench-peers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@echo "analyticbot stack: status page http://127.0.0.1:9100/ - health on 9091-9097 - Ctrl-C stops it"
	@echo "autoscaling: in another shell, $(BIN)/python -m examples.analyticbot.burst 2000 enqueues 2,000 jobs;"
	@echo "  the jobs worker goes from 1 to 4 copies, and back to 1 once the queue has been empty for 30 s"
	$(BIN)/procguard up -c examples/analyticbot/procguard.toml

test: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Rewrite the docs' generated tables (settings, procguard.toml keys) from their declarations.
docs: $(STAMP)
	$(BIN)/python -m tests.doc_tables

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# procguard against supervisord, circus and PM2 (installed into bench/.peers/ only); ARGS=--quick
bench-peers: $(STAMP)
	$(BIN)/python -m bench.head_to_head.install
	$(BIN)/python -m bench.head_to_head $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
