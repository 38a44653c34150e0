# Two commands do all set-up on a fresh machine:
#   make test   - create .venv, build fastops._C, run the tests
#   make bench  - create .venv, build, run the pytest-benchmark comparisons; speedup table and chart in build/
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

.PHONY: venv build test bench bench-compare ptxas triton-ptxas sanitize wheel-check clean

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

# The test run records every Triton launch (tools/triton_ptxas.py, a pytest plugin), then triton-ptxas compiles
# each recorded variant for sm_80/sm_90 (and checks it with its integer arguments = 1, which Triton's GPU JIT
# turns into constexprs) and fails on a compile error or a spill.
# The second pass runs only on a machine with a GPU: Triton on the device needs TRITON_INTERPRET unset.
test: build
	FASTOPS_TRITON_RECORD=build/triton_launches.json PYTHONPATH=tools \
		$(VPY) -m pytest tests -q -p no:cacheprovider -p triton_ptxas $(PYTEST_ARGS)
	$(MAKE) --no-print-directory triton-ptxas
	@if $(VPY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		echo "GPU present: running the device pass (cpp and triton on CUDA)"; \
		TRITON_INTERPRET=0 $(VPY) -m pytest tests/test_impls.py -q -p no:cacheprovider -k "cuda" $(PYTEST_ARGS); \
	fi

# Triton's GPU compiler (no GPU needed) on every kernel variant the last `make test` launched.
triton-ptxas:
	$(VPY) tools/triton_ptxas.py build/triton_launches.json

# ASan + UBSan build of the CPU extension (build/sanitize/, the in-place build is untouched), then the tests
# under it; any sanitizer report fails. SANITIZE_ARGS selects tests (default: all).
SANITIZE_ARGS ?= tests -q
sanitize: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) tools/sanitize.py $(SANITIZE_ARGS)

# Packaging check (not in CI: builds the CPU extension from a copy of the tree, several minutes): the wheel
# (FASTOPS_CUDA=0), a fresh venv with torch/torchvision from the configured index, the wheel, pip check, one op of
# every family, fastops/docs shipped, fastops.models imported (tools/wheel_check.py).
wheel-check: venv
	$(VPY) tools/wheel_check.py

# Progress per benchmark (-v), each run saved under .benchmarks/ (`make bench-compare`: the last two runs),
# table build/speedup_table.md and chart build/speedup.png. Default environment (no THP_MEM_ALLOC_ENABLE);
# `make bench BENCH_THP=1` adds a second pass with PyTorch's huge-page allocations and a THP speedup column.
BENCH_THP ?= 0
BENCH_FLAGS = -p no:cacheprovider -v --benchmark-columns=median,iqr,rounds --benchmark-sort=name
bench: build
	@mkdir -p build
	$(VPY) -m pytest bench $(BENCH_FLAGS) --benchmark-json=build/bench.json --benchmark-autosave \
		--benchmark-storage=file://$(CURDIR)/.benchmarks $(PYTEST_ARGS)
	@if [ "$(BENCH_THP)" = 1 ]; then \
		echo "bench: second pass with THP_MEM_ALLOC_ENABLE=1"; \
		THP_MEM_ALLOC_ENABLE=1 $(VPY) -m pytest bench $(BENCH_FLAGS) --benchmark-json=build/bench_thp.json \
			$(PYTEST_ARGS) || exit 1; \
	fi
	$(VPY) tools/speedup_table.py build/bench.json --chart build/speedup.png \
		$(if $(filter 1,$(BENCH_THP)),--thp build/bench_thp.json) | tee build/speedup_table.md

# The last two saved `make bench` runs side by side (per side and thread count: old/new medians, speedups).
bench-compare:
	$(VPY) tools/speedup_table.py --compare-last .benchmarks

clean:
	rm -rf build fastops/*.so
