# Two commands do all set-up on a fresh machine: `make demo` (main job), `make test`.
VENV ?= .venv
PYTHON ?= python3
NVCC_HOME := $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME ?= $(NVCC_HOME)
STAMP := $(VENV)/.splitkern-installed

.PHONY: install demo test bench bench-results kernels clean prepare-gpu

$(STAMP): requirements-dev.txt setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/splitkern train --data synthetic --model wrn10-2 --split 4-4 --epochs 6 --out runs/demo --overwrite
	$(VENV)/bin/splitkern plot runs/demo

test: install
	$(VENV)/bin/ruff check splitkern tests benchmarks examples experiments
	$(VENV)/bin/python -m pytest -q tests

bench: install
	$(VENV)/bin/python -m pytest benchmarks --benchmark-only --benchmark-enable

bench-results: install
	for bench in benchmarks/bench_*.py; do $(VENV)/bin/python $$bench || exit 1; done

clean:
	rm -rf build *.egg-info splitkern/_C*.so

kernels: install
	$(VENV)/bin/splitkern report-kernels

# the CUTLASS headers a GPU session carries (its machine cannot pip install nvidia-cutlass)
prepare-gpu: install
	rm -rf build/cutlass_include
	mkdir -p build
	cp -r "$$($(VENV)/bin/python -c 'import cutlass_library, os; print(os.path.dirname(cutlass_library.__file__))')/source/include" build/cutlass_include
