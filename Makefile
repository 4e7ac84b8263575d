# Two commands do all set-up on a fresh machine: `make demo` (main job), `make test`.
VENV ?= .venv
PYTHON ?= python3
NVCC_HOME := $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME ?= $(NVCC_HOME)
# the full install (`make install`, `make test`, CI): dev requirements + the extension with every kernel it can build
STAMP := $(VENV)/.splitkern-installed
# the demo's install on a machine without a GPU: runtime requirements only, no extension (the demo runs on
# PyTorch's CPU kernels, which the CPU backends use anyway), so no minutes of nvcc for a GPU that is not there
DEMO_STAMP := $(VENV)/.splitkern-demo-installed
# a usable NVIDIA GPU (the driver answers); DEMO_BUILD=full builds everything for the demo anyway
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
DEMO_BUILD ?= $(if $(HAVE_GPU),full,light)
RUNTIME_REQUIREMENTS := $(shell grep -E '^(torch|numpy|tqdm|matplotlib)([=<> ]|$$)' requirements-dev.txt | sed 's/ *\#.*//')
DEMO_ARGS := --data synthetic --model wrn10-2 --split 4-4 --epochs 6 --out runs/demo --overwrite

.PHONY: install demo test bench bench-results results kernels clean prepare-gpu

$(STAMP): requirements-dev.txt setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(STAMP)

# light: the full install if one is there, else runtime requirements + the pure-Python package (no extension)
$(DEMO_STAMP): requirements-dev.txt setup.py pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	if [ ! -f $(STAMP) ]; then \
	  $(VENV)/bin/pip install -q $(RUNTIME_REQUIREMENTS) && \
	  SPLITKERN_SKIP_CUDA_BUILD=1 $(VENV)/bin/pip install -q --no-build-isolation --no-deps -e . ; \
	fi
	touch $@

demo: $(if $(filter full,$(DEMO_BUILD)),$(STAMP),$(DEMO_STAMP))
	$(VENV)/bin/splitkern train $(DEMO_ARGS)
	$(VENV)/bin/splitkern plot runs/demo

# docs/results.md and its figures, from the CSVs and metrics files committed in benchmarks/results and experiments
# (the demo's light install is enough: matplotlib draws; nothing is compiled)
results: $(DEMO_STAMP)
	$(VENV)/bin/python docs/make_results.py

test: install
	$(VENV)/bin/ruff check splitkern tests benchmarks examples experiments docs
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
