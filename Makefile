# Two commands a newcomer needs: `make demo` runs the proxy against simulated Ollama
# backends, `make test` runs lint, types and the whole test suite. Each makes its own venv.
PY ?= python3
VENV := .venv
SECANTUS := .venv-secantus
RUNTIME := $(VENV)/.runtime-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: demo test test-properties lint bench clean

# Each install says what it does first: pip -q is silent for up to two minutes.
$(RUNTIME): setup.cfg pyproject.toml
	@test -x $(VENV)/bin/python || { echo "make: creating $(VENV) with $(PY)"; $(PY) -m venv $(VENV); }
	@echo "make: installing olbproxy and its dependencies into $(VENV) (about a minute the first time)"
	$(VENV)/bin/pip install -q -e .
	@touch $@

$(TESTDEPS): $(RUNTIME)
	@echo "make: installing the test tools into $(VENV): pytest, ruff, mypy, the ollama client (a minute or two)"
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# SecantusDB (GPL-2.0) is a MongoDB wire-protocol server for tests only: it lives in its
# own venv so it never becomes a dependency of the package.
$(SECANTUS)/bin/secantusd-py:
	@echo "make: installing SecantusDB, the tests' MongoDB wire server, into $(SECANTUS) (about a minute)"
	$(PY) -m venv $(SECANTUS)
	$(SECANTUS)/bin/pip install -q SecantusDB==0.7.0b3

demo: $(RUNTIME)
	$(VENV)/bin/olbproxy demo

lint: $(TESTDEPS)
	@echo "make: lint (ruff), format check and types (mypy --strict)"
	$(VENV)/bin/ruff check olbproxy tests bench
	$(VENV)/bin/ruff format --check olbproxy tests bench
	$(VENV)/bin/mypy

# The relay, splice and client tests run a second time with the splice off
# (relay.splice: false, aiohttp's documented API only). -rs: a skipped test says why
# (e.g. no Prometheus here; CI requires it).
SPLICE_BOTH_WAYS := tests/test_relay.py tests/test_splice.py tests/test_clients.py tests/test_failover.py

test: lint $(SECANTUS)/bin/secantusd-py
	@echo "make: running the tests (about two minutes)"
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/pytest -q -rs
	OLBPROXY_SPLICE=0 $(VENV)/bin/pytest -q -rs $(SPLICE_BOTH_WAYS)

# The edge's property suite with many more examples than `make test` runs, new ones
# each time (Hypothesis's "long" profile).
test-properties: $(TESTDEPS)
	HYPOTHESIS_PROFILE=long $(VENV)/bin/pytest -q tests/test_edge_properties.py

bench: $(TESTDEPS) $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SECANTUS) *.egg-info .mypy_cache .ruff_cache .pytest_cache
