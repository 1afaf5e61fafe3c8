# The README's two set-up commands are `make demo` and `make test`.
#
# Where synthlearn is installed: into the virtualenv that is active (VIRTUAL_ENV), else into a
# project `.venv`. Never into the shared Python: synthlearn installs the generic import
# packages `node`, `coordinator` and `shared`, which must not land in a hospital's
# site-packages. The `.venv` sees the system's packages (--system-site-packages) so that a
# torch already installed there (a hospital's CUDA build) is kept; otherwise the pinned CPU
# build is installed.
PYTHON ?= python3
ifdef VIRTUAL_ENV
ENV := $(VIRTUAL_ENV)
else
ENV := $(CURDIR)/.venv
endif
PY := $(ENV)/bin/python
BIN := $(ENV)/bin

.PHONY: install nginx chromium demo test lint

$(CURDIR)/.venv/bin/python:
	$(PYTHON) -m venv --system-site-packages $(CURDIR)/.venv

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

# The coordinator's only public port is an nginx proxy (Fleet API only; see deploy/README.md),
# and its tests start a real one: install Debian's nginx when it is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  ( $(SUDO) apt-get install -y nginx || \
	    ( $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx ) )

# The report and reader-study tests open pages in a real headless browser: Debian's Chromium
# (never a browser downloaded by a test tool).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  ( $(SUDO) apt-get install -y chromium || \
	    ( $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium ) )

demo: install
	$(BIN)/synthlearn demo --out demo-output

lint:
	$(BIN)/ruff check node coordinator shared tests benchmarks
	$(BIN)/mypy

test: install nginx chromium lint
	$(PY) -m pytest -q
