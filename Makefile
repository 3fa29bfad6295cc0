# Two commands a newcomer needs: `make demo` runs the proxy against simulated Ollama
# backends, `make test` runs lint, types and the whole test suite. Each makes its own venv.
PY ?= python3
VENV := .venv
SECANTUS := .venv-secantus
RUNTIME := $(VENV)/.runtime-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: demo test test-ui lint bench clean

$(RUNTIME): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	touch $@

$(TESTDEPS): $(RUNTIME)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# SecantusDB (GPL-2.0) is a MongoDB wire-protocol server for tests only: it lives in its
# own venv so it never becomes a dependency of the package.
$(SECANTUS)/bin/secantusd-py:
	$(PY) -m venv $(SECANTUS)
	$(SECANTUS)/bin/pip install -q SecantusDB==0.7.0b3

demo: $(RUNTIME)
	$(VENV)/bin/olbproxy demo

lint: $(TESTDEPS)
	$(VENV)/bin/ruff check olbproxy tests bench
	$(VENV)/bin/ruff format --check olbproxy tests bench
	$(VENV)/bin/mypy

test: lint $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/pytest -q

# The web page's browser tests alone (also part of `make test`); they need Debian's
# chromium (apt-get install -y chromium) and skip without it.
test-ui: $(TESTDEPS) $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py \
	  $(VENV)/bin/pytest -q tests/ui tests/test_ui_site.py tests/test_console.py

bench: $(TESTDEPS) $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SECANTUS) *.egg-info .mypy_cache .ruff_cache .pytest_cache
