# Targets that people and CI run alike. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# Test processes for `make test` (pytest-xdist). Most tests wait on brokers, processes and
# deadlines, so more workers than cores keep the cores busy: 1,550 tests took 7:41 with 3, 6:29
# with 4 and 5:58 with 5 on 2 cores (~600 s of CPU each time; docs/performance.md).
# --dist loadgroup: the tests marked xdist_group("NAME") run in one process, in order: those of the
# Kubernetes control plane, those of the RabbitMQ cluster (each server starts once for the run),
# and the web console's browser tests (one set of processes and one browser, module-scoped); the
# slow tests are handed out first (tests/conftest.py, docs/design.md "Testing").
# PYTHONDONTWRITEBYTECODE is cleared for the run: with it set (as on some machines), each xdist
# worker rewrote every test module's asserts again and each process the tests start compiled what
# it imports from source, as an installed system (pip compiles its bytecode) never does.
TEST_JOBS ?= 5

.PHONY: help venv test check lint typecheck imports crds demo bench eval faults screenshots clean

help:
	@echo "make demo   - run the lifelong-learning demo on the embedded broker (ARGS=--keep-running:"
	@echo "              keep it running after the last round, to watch it in the web console)"
	@echo "make test   - install into $(VENV) and run the test suite"
	@echo "make check  - ruff, mypy and the import-layer contracts"
	@echo "make crds   - regenerate deploy/crds from the API models"
	@echo "make bench  - benchmarks against raw paho-mqtt (QUICK=1 for the short run)"
	@echo "make eval   - lifelong-learning metrics against Sedna's defaults and baselines (FAST=1: small)"
	@echo "make faults - the fault suite with full repetition counts"
	@echo "make screenshots - the web console's browser tests, saving their pictures in docs/console/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev,kubernetes,examples,bench,eval]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# The Kubernetes-mode tests run against a real etcd and kube-apiserver built from tests/k8s by
# tests/k8s/build.sh, once per go.sum into a cache outside the repository (a cold build takes
# 8-13 minutes on 2 cores; then seconds). Without Go they are skipped, and this says so.
test: $(STAMP)
	@if [ -z "$$LIFELONG_K8S_BIN_DIR" ] && command -v go >/dev/null 2>&1; then \
	  LIFELONG_K8S_BIN_DIR="$$(bash tests/k8s/build.sh | tail -n 1)" || exit 1; \
	  export LIFELONG_K8S_BIN_DIR; \
	elif [ -z "$$LIFELONG_K8S_BIN_DIR" ]; then \
	  echo "make test: no Go toolchain, so the Kubernetes-mode tests (a real kube-apiserver and etcd, tests/k8s) are skipped"; \
	fi; \
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy and import-linter need the real `lifelong.*` tree on disk; the editable install maps
# folders with an import hook they cannot follow, so build a plain copy for them. setuptools
# builds through ./build and leaves there the modules that were moved or deleted since, which
# would land in the copy: start from an empty one.
.build/pkg: $(STAMP) $(shell find cli common cloud edge broker learning -name '*.py' 2>/dev/null)
	rm -rf .build/pkg build
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target .build/pkg . >/dev/null
	touch .build/pkg

typecheck: .build/pkg
	cd .build/pkg && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p lifelong

imports: .build/pkg
	PYTHONPATH=.build/pkg $(BIN)/lint-imports --config pyproject.toml

check: lint typecheck imports

crds: $(STAMP)  ## also refreshes the copies kustomize needs in deploy/k8s
	$(BIN)/python -m lifelong.common.api.crdgen deploy/crds
	sh deploy/k8s/sync.sh

# ARGS: options of `lifelong demo`, e.g. make demo ARGS=--keep-running (the console stays up)
demo: $(STAMP)
	$(BIN)/lifelong demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

# The real system (broker, GM with its KB, LC, the library's workers) and the baselines on the same
# data; results and plots in benchmarks/results/, explained in docs/lifelong-learning.md.
eval: $(STAMP)
	$(BIN)/python -m benchmarks.lifelong_eval $(if $(FAST),--fast,) $(EVAL_ARGS)

faults: $(STAMP)  ## the fault suite with the full counts; prints the table of docs/reliability.md
	mkdir -p .build && rm -f .build/faults.jsonl
	LIFELONG_FAULT_REPEAT=$(or $(REPEAT),10) LIFELONG_FAULT_EXAMPLES=$(or $(EXAMPLES),1000) \
	LIFELONG_FAULT_RESULTS=$(CURDIR)/.build/faults.jsonl \
	$(BIN)/python -m pytest -m faults tests/faults --timeout 1800 $(PYTEST_ARGS)
	cd tests && ../$(BIN)/python -m harness.faults ../.build/faults.jsonl

# The browser tests of the web console (headless Chromium, tests/harness/browser.py) save one
# picture per page; docs/console.md shows the ones in docs/console/. They must not skip here.
screenshots: $(STAMP)
	mkdir -p docs/console
	LIFELONG_REQUIRE_BROWSER=1 LIFELONG_CONSOLE_SHOTS=$(CURDIR)/docs/console \
	$(BIN)/python -m pytest -p no:cacheprovider tests/e2e/test_console_browser.py $(PYTEST_ARGS)

clean:
	rm -rf .build build *.egg-info
