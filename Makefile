# Two commands do all set-up on a fresh machine:
#   make test   - create .venv, build fastops._C, run the tests
#   make bench  - create .venv, build, run the pytest-benchmark comparisons and print the speedup table
SHELL   := /bin/bash
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
JOBS    ?= 2
CUDA_HOME ?= $(shell sh -c 'n=$$(command -v nvcc) && { sed -n "s/^exec \([^ ]*\)\/bin\/nvcc.*/\1/p" $$n; } | head -1')
export MAX_JOBS := $(JOBS)
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export CUDA_HOME
# Worktrees of one clone share ccache hits (paths are hashed relative to this base).
export CCACHE_BASEDIR ?= $(abspath $(CURDIR)/..)
export CCACHE_NOHASHDIR ?= 1
PYTEST_ARGS ?=

.PHONY: venv build test bench ptxas clean

$(VENV)/.stamp:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1 triton pytest pytest-benchmark hypothesis \
		numpy scipy ninja expecttest setuptools wheel \
		onnx onnxruntime onnxscript matplotlib
	touch $@

venv: $(VENV)/.stamp

# In-place build (incremental with ninja, cached with ccache when installed); the log keeps ptxas' figures.
# The editable install (once per setup.py change) maps models/ to fastops.models as a wheel does.
build: venv
	@mkdir -p build
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) setup.py -q build_ext --inplace 2>&1 | tee build/build.log; \
		test $${PIPESTATUS[0]} -eq 0
	$(MAKE) --no-print-directory $(VENV)/.editable
	$(VPY) tools/ptxas_report.py build/build.log

$(VENV)/.editable: setup.py pyproject.toml
	FASTOPS_NO_EXT=1 $(VPY) -m pip install -q --no-build-isolation --no-deps -e . > build/editable.log 2>&1 \
		|| { cat build/editable.log; exit 1; }
	touch $@

ptxas:
	$(VPY) tools/ptxas_report.py build/build.log

# The second pass runs only on a machine with a GPU: Triton on the device needs TRITON_INTERPRET unset.
test: build
	$(VPY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)
	@if $(VPY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		echo "GPU present: running the device pass (cpp and triton on CUDA)"; \
		TRITON_INTERPRET=0 $(VPY) -m pytest tests/test_impls.py -q -p no:cacheprovider -k "cuda" $(PYTEST_ARGS); \
	fi

bench: build
	@mkdir -p build
	# Transparent huge pages for both sides: otherwise first-touch page faults of large fresh outputs dominate.
	THP_MEM_ALLOC_ENABLE=1 $(VPY) -m pytest bench -q -p no:cacheprovider --benchmark-json=build/bench.json \
		--benchmark-columns=median,iqr,rounds --benchmark-sort=name $(PYTEST_ARGS)
	$(VPY) tools/speedup_table.py build/bench.json | tee build/speedup_table.md

clean:
	rm -rf build fastops/*.so
