# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config.toml

.PHONY: run test test-unit test-e2e unit e2e test-deps lint audit bench clean system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) main.py run --config $(CONFIG)

# Bluesky's reference PDS (npm @atproto/dev-env, Node 22 from npm) for the end-to-end test.
PDS := tests/bluesky_pds
$(PDS)/node_modules/.siar-installed: $(PDS)/package-lock.json
	sh $(PDS)/install.sh

# Debian's chromium and promtool (apt-get when root and missing; a clear message otherwise).
system-deps:
	@sh scripts/system-deps.sh

# pip-audit over the installed dependencies: a known vulnerability fails; an unreachable
# vulnerability service prints one NOTICE line and the build goes on (scripts/audit.py).
audit: $(VENV)/.installed-dev
	$(PY) scripts/audit.py

# `make test` = lint + audit + the fast unit set and the end-to-end set (real processes, the
# Bluesky PDS, Chromium, several daemons, kill tests) side by side (the end-to-end tests mostly
# wait on subprocesses and servers, so the two sets share two cores well), then one coverage
# report over both.
COV := --cov=bot --cov=channels --cov-report=
test-deps: $(VENV)/.installed-dev $(PDS)/node_modules/.siar-installed system-deps

test: test-deps lint audit
	rm -f .coverage .coverage.unit .coverage.e2e
	$(MAKE) --no-print-directory --output-sync=target -j2 test-unit test-e2e
	$(PY) -m coverage combine .coverage.unit .coverage.e2e >/dev/null
	$(PY) -m coverage report --skip-covered --sort=cover | tail -25

test-unit:
	COVERAGE_FILE=.coverage.unit $(PY) -m pytest -q -m unit $(COV)

test-e2e:
	COVERAGE_FILE=.coverage.e2e $(PY) -m pytest -q -m "e2e or slow" $(COV)

unit: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m unit

e2e: test-deps
	$(PY) -m pytest -q -m "e2e or slow"

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Figures side by side with the alternatives (minutes each; see benchmarks/README.md). The
# PostgreSQL ones (store_growth, webpush) use the server on 127.0.0.1:5432.
bench: $(VENV)/.installed-dev
	$(PY) benchmarks/poll.py
	$(PY) benchmarks/poll_compare.py
	$(PY) benchmarks/store_growth.py
	$(PY) benchmarks/fanout.py
	$(PY) benchmarks/webpush.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/operations.py
	$(PY) benchmarks/cards.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
