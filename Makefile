# Two commands a newcomer needs: `make demo` runs the proxy against simulated Ollama
# backends, `make test` runs lint, types and the whole test suite. Each makes its own venv.
PY ?= python3
VENV := .venv
SECANTUS := .venv-secantus
RUNTIME := $(VENV)/.runtime-installed
# Exact versions of everything make installs into .venv (runtime, test tools, client
# libraries), so that CI and every machine test the same thing. `make lock` rewrites it.
CONSTRAINTS := constraints.txt
TESTDEPS := $(VENV)/.test-installed
# The client libraries of the conformance suite (tests/clients/), pinned in one place each:
# Python in requirements.txt, ollama-js in js/package-lock.json.
CLIENT_PINS := tests/clients/requirements.txt
NODE_CLIENTS := tests/clients/js/node_modules/.package-lock.json

OPENWEBUI := .venv-openwebui
OPENWEBUI_PINS := tests/openwebui/requirements.txt

.PHONY: demo test test-ui test-properties test-openwebui lint lock bench clean

# Each install says what it does first: pip -q is silent for up to two minutes.
$(RUNTIME): setup.cfg pyproject.toml $(CONSTRAINTS)
	@test -x $(VENV)/bin/python || { echo "make: creating $(VENV) with $(PY)"; $(PY) -m venv $(VENV); }
	@echo "make: installing olbproxy and its dependencies into $(VENV) (about a minute the first time)"
	$(VENV)/bin/pip install -q -c $(CONSTRAINTS) -e .
	@touch $@

$(TESTDEPS): $(RUNTIME) $(CLIENT_PINS)
	@echo "make: installing the test tools and the client libraries into $(VENV): pytest, ruff, mypy, ollama, openai, anthropic, langchain, llama-index (a minute or two)"
	$(VENV)/bin/pip install -q -c $(CONSTRAINTS) -e '.[test]' -r $(CLIENT_PINS)
	@touch $@

# ollama-js for tests/clients/test_ollama_js.py. Without npm the JS tests skip and say why
# (CI sets OLBPROXY_REQUIRE_NODE=1, which turns that skip into a failure).
$(NODE_CLIENTS): tests/clients/js/package.json tests/clients/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error; \
	else \
	  echo "warning: npm not found: the ollama-js client tests will skip"; \
	fi

# SecantusDB (GPL-2.0) is a MongoDB wire-protocol server for tests only: it lives in its
# own venv so it never becomes a dependency of the package.
$(SECANTUS)/bin/secantusd-py:
	@echo "make: installing SecantusDB, the tests' MongoDB wire server, into $(SECANTUS) (about a minute)"
	$(PY) -m venv $(SECANTUS)
	$(SECANTUS)/bin/pip install -q SecantusDB==0.7.0b3

# Open WebUI end to end, opt-in (not part of `make test`): a venv of ~3 GB. torch goes in
# first and alone: its CPU build lies on this machine's disk, while resolving it as one of
# Open WebUI's dependencies pulls a CUDA build of several GB.
$(OPENWEBUI)/.installed: $(OPENWEBUI_PINS) setup.cfg pyproject.toml
	test -x $(OPENWEBUI)/bin/python || $(PY) -m venv $(OPENWEBUI)
	$(OPENWEBUI)/bin/pip install -q $$(grep '^torch==' $(OPENWEBUI_PINS))
	$(OPENWEBUI)/bin/pip install -q -r $(OPENWEBUI_PINS) -e '.[test]'
	touch $@

# Debian's Chromium for Playwright (never `playwright install`: no browser downloads here).
test-openwebui: $(OPENWEBUI)/.installed
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; }
	OLBPROXY_REQUIRE_OPENWEBUI=1 $(OPENWEBUI)/bin/pytest -q -s tests/openwebui

demo: $(RUNTIME)
	$(VENV)/bin/olbproxy demo

lint: $(TESTDEPS)
	@echo "make: lint (ruff), format check and types (mypy --strict)"
	$(VENV)/bin/ruff check olbproxy tests bench
	$(VENV)/bin/ruff format --check olbproxy tests bench
	$(VENV)/bin/mypy

# The relay, splice, lane and client tests run a second time with the splice and the lane
# off (relay.splice, relay.lane: false; aiohttp's documented API only). -rs: a skipped test says why
# (e.g. no Prometheus here; CI requires it).
SPLICE_BOTH_WAYS := tests/test_relay.py tests/test_splice.py tests/clients tests/test_failover.py \
  tests/test_lane.py

test: lint $(SECANTUS)/bin/secantusd-py $(NODE_CLIENTS)
	@echo "make: running the tests (about two minutes)"
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/pytest -q -rs
	OLBPROXY_SPLICE=0 $(VENV)/bin/pytest -q -rs $(SPLICE_BOTH_WAYS)

# The edge's property suite with many more examples than `make test` runs, new ones
# each time (Hypothesis's "long" profile).
test-properties: $(TESTDEPS)
	HYPOTHESIS_PROFILE=long $(VENV)/bin/pytest -q tests/test_edge_properties.py

# The web page's browser tests alone (also part of `make test`); they need Debian's
# chromium (apt-get install -y chromium) and skip without it.
test-ui: $(TESTDEPS) $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py \
	  $(VENV)/bin/pytest -q tests/ui tests/test_ui_site.py tests/test_console.py

# Resolve the newest versions setup.cfg and the client pins allow, in a fresh venv, and
# record them: run it to update dependencies, then run `make test` and commit both.
lock:
	@echo "make: resolving the dependencies in a fresh venv (a minute or two)"
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q -e '.[test]' -r $(CLIENT_PINS)
	{ echo "# Exact versions installed by make (make lock rewrites this file)."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -iv '^olbproxy'; } > $(CONSTRAINTS)
	rm -rf .venv-lock

bench: $(TESTDEPS) $(SECANTUS)/bin/secantusd-py
	OLBPROXY_SECANTUSD=$(CURDIR)/$(SECANTUS)/bin/secantusd-py $(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SECANTUS) $(OPENWEBUI) *.egg-info .mypy_cache .ruff_cache .pytest_cache \
	  tests/clients/js/node_modules
