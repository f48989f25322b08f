# adautomix_fast: the two commands of the README, plus benchmarks and the GPU check.
#   make train   set up .venv (if absent), install, train on the bundled digits data
#   make test    set up .venv (if absent), install, run the whole test suite
#   make lint    set up .venv (if absent), install, check the code with ruff (settings in pyproject.toml)
# Extra training flags: make train ARGS="--epochs 5"   (TRAIN_ARGS holds the defaults)

PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.adautomix-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh)
ARGS    ?=
# No precision flag: the engine uses bf16 where the GPU or CPU computes it natively, fp32 elsewhere
# (bf16 autocast on a CPU without bf16 instructions is ~37x slower than fp32).
TRAIN_ARGS ?=
OUT     ?= bench/results

.PHONY: install train test lint test-compat docs bench bench-step gpu-check clean

$(PYTHON):
	$(PY) -m venv $(VENV)

# torch first (the extension build imports it), then the project without build isolation so the
# build uses this torch instead of fetching another one.
$(STAMP): $(SOURCES) | $(PYTHON)
	$(PYTHON) -m pip install --disable-pip-version-check -q "torch>=2.11" "torchvision>=0.26"
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-build-isolation -e ".[test,dali]"
	# cv2 from OpenCV's contrib build: SaliencyMix needs cv2.saliency. imagecorruptions depends on the
	# plain opencv-python, whose cv2 files this replaces with a superset (the same module).
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps --force-reinstall opencv-contrib-python-headless
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PYTHON) -m adautomix_fast.train $(TRAIN_ARGS) $(ARGS)

test: install
	$(PYTHON) -m pytest -q tests $(ARGS)

# ruff: pycodestyle, pyflakes and import order ([tool.ruff] in pyproject.toml).
lint: install
	$(PYTHON) -m ruff check .

# The generated parts of docs/ (the methods table of docs/methods.md) from the code.
docs: install
	$(PYTHON) tools/update-docs

# The compiled-step, kernel and import tests on the GPU image's versions (torch 2.11, triton 3.6,
# Python 3.12 when present, none of the optional packages) in .venv-compat: tools/test-compat.
test-compat:
	tools/test-compat $(ARGS)

# pytest-benchmark suites (step, kernels, data), this machine's sizes; each run is kept in
# .benchmarks/ so that the next one compares: make bench ARGS="--benchmark-compare".
bench: install
	$(PYTHON) -m pytest bench/ --benchmark-only --benchmark-autosave -p no:cacheprovider $(ARGS)

# Side-by-side step report (vanilla, reference, fused ... in one process, with ratios), results
# JSON under $(OUT).
bench-step: install
	$(PYTHON) -m bench.step --out $(OUT) $(ARGS)

# The GPU check (docs/benchmarks.md): GPU-marked tests, step benchmarks at GPU sizes, summary
# table and results JSON in $(OUT). Uses the Python that already has torch (GPU_PYTHON) because
# GPU machines have torch preinstalled and may have no network; on a CPU-only machine it is a
# dry run that says what it skipped.
GPU_PYTHON ?= $(shell [ -x $(PYTHON) ] && echo $(PYTHON) || echo python3)
gpu-check:
	$(GPU_PYTHON) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . 
	$(GPU_PYTHON) -m bench.gpu_check --out $(OUT) $(ARGS)

clean:
	rm -rf build *.egg-info adautomix_fast/_C*.so .pytest_cache
