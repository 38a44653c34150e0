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
PYTEST_ARGS ?=

.PHONY: venv build test bench ptxas clean

$(VENV)/.stamp:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1 triton pytest pytest-benchmark hypothesis \
		numpy scipy ninja expecttest setuptools wheel
	touch $@

venv: $(VENV)/.stamp

# In-place build (incremental with ninja, cached with ccache when installed); the log keeps ptxas' figures.
build: venv
	@mkdir -p build
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) setup.py -q build_ext --inplace 2>&1 | tee build/build.log; \
		test $${PIPESTATUS[0]} -eq 0
	$(VPY) tools/ptxas_report.py build/build.log

ptxas:
	$(VPY) tools/ptxas_report.py build/build.log

test: build
	PYTHONPATH=$(CURDIR) $(VPY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

bench: build
	@mkdir -p build
	PYTHONPATH=$(CURDIR) $(VPY) -m pytest bench -q -p no:cacheprovider --benchmark-json=build/bench.json \
		--benchmark-columns=median,iqr,rounds --benchmark-sort=name $(PYTEST_ARGS)
	$(VPY) tools/speedup_table.py build/bench.json | tee build/speedup_table.md

clean:
	rm -rf build fastops/*.so
