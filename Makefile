# The README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install nginx demo test lint

# Keep any torch already installed (hospital CUDA builds); otherwise take the pinned CPU build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

# The coordinator's only public port is an nginx proxy (Fleet API only; see deploy/README.md),
# and its tests start a real one: install Debian's nginx when it is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  ( $(SUDO) apt-get install -y nginx || \
	    ( $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx ) )

demo: install
	synthlearn demo --out demo-output

lint:
	ruff check node coordinator shared tests benchmarks
	mypy

test: install nginx lint
	$(PYTHON) -m pytest -q
