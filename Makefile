# Two commands do all set-up on a fresh machine:
#   make demo   installs, trains LeNet-300-100 on the bundled MNIST sample, compresses it, prints a table
#   make test   installs and runs the whole test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test test-slow lint bench

# Install the CPU build of torch first where no torch is present: a bare `torch` requirement
# would otherwise pull a multi-GB CUDA build. Any recent torch already installed is kept.
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@$(PIP) install -q -e ".[dev]"

demo: setup
	$(PYTHON) -m torchshrink demo

test: setup
	$(PYTHON) -m pytest -x -p no:cacheprovider --timeout=600

test-slow: setup
	$(PYTHON) -m pytest -m slow -p no:cacheprovider --timeout=1800

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m mypy

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PYTHON) $$f || exit 1; done
