# `make demo` and `make test` do all set-up on a fresh machine: a .venv/ in the project root,
# the pinned torch stack, the project with its native extension, then the job itself.
# Set-up is idempotent: stamps in .venv/ skip what is already done.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The pinned stack (newer torch needs C++20 and pulls GBs; 2.13 has no torchvision).
STACK  := torch==2.14.1 torchvision==0.29.1
DEPS   := numpy scikit-learn matplotlib tqdm pytest pytest-benchmark ruff ninja "setuptools>=64" wheel build \
          scikit-image opacus cleanlab networkx av pytorch-ood pandas pyarrow
# torchattacks pins requests~=2.25 (an old release it never imports); its real needs are in DEPS.
NODEPS := torchattacks==3.5.1
NATIVE_SOURCES := $(shell find csrc -type f) setup.py pyproject.toml
# The venv's ninja must be on PATH, or torch's BuildExtension compiles one file at a time.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test bench doctor gpu-check clean

$(VENV)/.stack: Makefile
	@echo "Installing the pinned stack into $(VENV)/ (torch, torchvision and the pipelines' dependencies)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(STACK) $(DEPS)
	$(PIP) install --quiet --no-deps $(NODEPS)
	touch $@

$(VENV)/.curvfast: $(VENV)/.stack $(NATIVE_SOURCES)
	@echo "Compiling the native extension curvfast._C (C++ ops, and CUDA kernels when a CUDA toolkit is found):"
	@echo "several minutes the first time, with no output until it is done; later runs skip it."
	$(PIP) install --quiet --no-build-isolation --no-deps -e ".[dev]"
	$(PY) -m curvfast doctor
	touch $@

demo: $(VENV)/.curvfast
	$(PY) -m curvfast demo --out runs/demo

test: $(VENV)/.curvfast
	$(VENV)/bin/ruff check curvfast benchmarks tests
	$(PY) -m pytest -q tests

bench: $(VENV)/.curvfast
	$(PY) -m benchmarks

# On a GPU machine, with the Python it is given and nothing installed (e.g. `make gpu-check
# PYTHON=python3`): build in place for the GPU present, run the CUDA half of the tests, the quick
# estimator cases, the op suite, Verifix's conv products (cuDNN vs patch_gram) and ResNet-50 at 224x224 / C=1000 in fp32 and bf16, and write
# benchmarks/results/<gpu>/. Without a GPU it stops at once, saying so.
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check

doctor: $(VENV)/.curvfast
	$(PY) -m curvfast doctor

clean:
	rm -rf build *.egg-info curvfast/*.so runs
