# The README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint

# Keep any torch already installed (hospital CUDA builds); otherwise take the pinned CPU build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

demo: install
	synthlearn demo --out demo-output

lint:
	ruff check node coordinator shared tests benchmarks
	mypy

test: install lint
	$(PYTHON) -m pytest -q
