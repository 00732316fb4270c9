# The two promises of the README: `make run` and `make test`, each from a fresh clone
# with nothing but Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 9000

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the packaging metadata changes; the install is editable, so code
# changes need no reinstall.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/line-echo --host $(HOST) --port $(PORT)

# Real peers some tests run, from the distribution: HAProxy (tests/integration/test_haproxy.py),
# the openssl command (TLS renegotiation in test_line_echo.py) and redis-benchmark with
# redis-server (docs/examples/resp_kv.py's tests and benchmark). Installed here when
# missing and we may (root with apt-get, as on CI's fresh machines; ~10 s).
.PHONY: test-tools
test-tools:
	@{ command -v haproxy || [ -x /usr/sbin/haproxy ]; } >/dev/null 2>&1 && \
	  command -v openssl >/dev/null 2>&1 && \
	  command -v redis-benchmark >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "make: installing haproxy, openssl and redis-tools (apt-get) for the tests" && \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy openssl redis-tools redis-server >/dev/null; } || \
	  echo "make: haproxy, openssl or redis-tools is missing and cannot be installed here: tests need them"

test: $(VENV)/.installed test-tools
	$(BIN)/python -m pytest -q

# The benchmark (tools/bench.py, docs/performance.md): installs the bench extra (uvloop), then
# runs every workload against every server; BENCH_ARGS="--smoke" or "--only firehose" etc.
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

# The docs site from docs/ (mkdocs.yml): site/index.html. --strict: a broken link, a missing
# anchor or a page left out of the nav fails the build (the suite builds it the same way).
.PHONY: docs
docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html"

clean:
	rm -rf $(VENV) build *.egg-info site
