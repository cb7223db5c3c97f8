# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py metrics_service/_native/_speedups.c | cksum | cut -d' ' -f1)

.PHONY: run test lint e2e bench chromium npm wrk cc clean

# Installs Debian packages as root, after one `apt-get update` per make run however many
# of chromium, npm, cc and wrk need one (the marker is this run's own).
APT_MARK := /tmp/metrics-service-apt-updated-$(shell date +%s%N)
APT_INSTALL = { [ -e $(APT_MARK) ] || { apt-get update -qq && touch $(APT_MARK); }; } && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# setuptools warns on every editable install that a folder named like the package may
# shadow it: that folder is this package, which is the point of an editable install.
$(STAMP): pyproject.toml setup.py metrics_service/_native/_speedups.c | $(BIN)/python cc
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# `make run PORT=9000` serves on another port (METRICS_PORT=9000 make run does too; a
# PORT merely present in the environment is ignored). `exec`: the server replaces the
# recipe's shell; Ctrl-C stops it cleanly with exit code 0, so make reports no error.
run: $(STAMP)
	exec $(BIN)/metrics-service serve $(if $(filter command line,$(origin PORT)),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian's Chromium: Playwright cannot download its own browser here.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			$(APT_INSTALL) chromium >/dev/null; \
		else \
			echo "Chromium is missing: run 'sudo apt-get install -y chromium' and try again." >&2; exit 1; \
		fi; \
	fi
	@test -x $(CHROMIUM) || { echo "Chromium is still missing at $(CHROMIUM)" >&2; exit 1; }

# npm fetches the SDK builds the browser tests load (e2e/sdks.py: npm pack, pinned).
npm:
	@if ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			$(APT_INSTALL) npm >/dev/null; \
		else \
			echo "npm is missing: run 'sudo apt-get install -y npm' and try again." >&2; exit 1; \
		fi; \
	fi

# A C compiler and Python's headers build the C extension (_speedups.c). Without
# them the service still installs and runs, slower (README.md); `make test` then fails.
cc:
	@if ! command -v gcc >/dev/null || ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
		if [ "$$(id -u)" = 0 ]; then \
			$(APT_INSTALL) gcc libc6-dev python3-dev >/dev/null; \
		else \
			echo "No C compiler or Python headers: run 'sudo apt-get install -y gcc python3-dev' for the C extension." >&2; \
		fi; \
	fi

# wrk, the load generator of `make bench`, also from Debian.
wrk:
	@if ! command -v wrk >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			$(APT_INSTALL) wrk >/dev/null; \
		else \
			echo "wrk is missing: run 'sudo apt-get install -y wrk' and try again." >&2; exit 1; \
		fi; \
	fi

# The whole suite with the C extension, then again with the Python code that stands
# in for it when it is not built (METRICS_PURE_PYTHON=1). The second pass leaves out
# the tests marked `once`, which cannot tell the two apart: the browser tests (e2e/)
# and the packaging, plugin and shipper tests.
# Bytecode is cached under .cache/pycache (ignored by git) even where the environment
# sets PYTHONDONTWRITEBYTECODE: every pytest process (three workers a pass, the
# plugin's own test runs) otherwise re-rewrites ~500 modules (schemathesis, hypothesis
# and the tests) before it runs a test. Three workers on two cores, since most tests
# wait on a server, a browser or a subprocess; worksteal evens out the long tests.
TEST_PYTEST := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/.cache/pycache \
	METRICS_E2E_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -n 3 --dist worksteal
test: $(STAMP) chromium npm lint
	$(TEST_PYTEST)
	METRICS_PURE_PYTHON=1 $(TEST_PYTEST) -m "not once"

# The browser tests alone, on two pytest-xdist workers (make test runs them on three).
e2e: $(STAMP) chromium npm
	METRICS_E2E_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -n 2 e2e

bench: $(STAMP) wrk
	$(BIN)/python -m tests.perf
	$(BIN)/python -m tests.perf.formats
	$(BIN)/python -m tests.perf.quarantine
	$(BIN)/python -m tests.perf.soak

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .cache/pycache e2e/artifacts metrics_service/_native/*.so
