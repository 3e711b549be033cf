# Targets for a fresh machine with only python3 (with venv and pip) and access to PyPI.
# `make run` runs the example workstream; `make test` runs the whole test suite.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
ORCH   := $(VENV)/bin/orchestrator
WS_ID  ?= ws-example-02-parallel-execution
WORKTREES := .worktrees
# The package's bytecode, written even where PYTHONDONTWRITEBYTECODE is set (as on this project's
# machines): without it every command compiles ~8k lines first, ~50 ms of each run's start-up.
BYTECODE := $(PY) -m compileall -q orchestrator

# A venv counts as usable when its interpreter starts and has pip; a missing one, or one left broken
# (say its base interpreter was removed), is recreated and the package installed again.
VENV_OK := $(shell $(PY) -c 'import pip' >/dev/null 2>&1 && echo ok)
ifneq ($(VENV_OK),ok)
VENV_FORCE := FORCE
endif

GENERATED := examples/math_utils.py examples/string_utils.py examples/file_utils.py \
             dependency_graph.png dependency_graph.mmd dependency_graph.dot

.DEFAULT_GOAL := help
.PHONY: help run test validate clean venv bench FORCE

help: ## show this help
	@echo "make targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 14

# Create (or recreate) the venv only when it is missing or broken.
define ensure_venv
	@if ! $(PY) -c 'import pip' >/dev/null 2>&1; then \
	    echo "creating $(VENV) with $(PYTHON)"; \
	    rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
endef

# .installed: the package (editable) with the test extra; .installed-dask: also the dask extra.
# Each is redone only when setup.cfg, pyproject.toml or this Makefile changed, or the venv had to be
# recreated. The editable install is a plain path entry (compat mode): setuptools' default finder
# runs at every interpreter start and imports pathlib, importlib.util and contextlib, ~10 ms of
# every command's start-up that `run` and `validate` otherwise do without.
EDITABLE_MODE := --config-settings editable_mode=compat
$(VENV)/.installed: setup.cfg pyproject.toml Makefile $(VENV_FORCE)
	$(ensure_venv)
	$(PIP) install -e '.[test]' $(EDITABLE_MODE)
	@$(BYTECODE)
	@touch $@

$(VENV)/.installed-dask: setup.cfg pyproject.toml Makefile $(VENV_FORCE)
	$(ensure_venv)
	$(PIP) install -e '.[test,dask]' $(EDITABLE_MODE)
	@$(BYTECODE)
	@touch $(VENV)/.installed $@

venv: $(VENV)/.installed ## create .venv and install the package with its test extra

run: $(VENV)/.installed ## run the example workstream (WS_ID=...) and show where its results are
	@$(BYTECODE)
	@rc=0; $(ORCH) run --ws-id $(WS_ID) || rc=$$?; \
	echo ""; \
	echo "summary: $(WORKTREES)/$(WS_ID)/latest/results_summary.json"; \
	echo "report:  $(WORKTREES)/$(WS_ID)/latest/execution_report.md"; \
	echo "log:     $(WORKTREES)/$(WS_ID)/orchestrator.log"; \
	exit $$rc

test: $(VENV)/.installed-dask ## run the whole test suite
	@# Graphviz lets the `graph --format png` test draw for real; without root it is left out
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) \
	    >/dev/null 2>&1; } || echo "note: Graphviz (dot) is not installed; the png graph test is skipped"
	@$(BYTECODE)
	$(PY) -m pytest

validate: $(VENV)/.installed ## validate every workstream in workstreams/
	@rc=0; for f in workstreams/*.json; do \
	    $(ORCH) validate "$$f" || rc=1; \
	done; exit $$rc

# The peers the benchmark compares against (and GNU time, for peak memory), installed from Debian's
# packages when missing (as root): command:package.
BENCH_PEERS := parallel:parallel ninja:ninja-build make:make /usr/bin/time:time

bench: $(VENV)/.installed ## benchmark against make, ninja, GNU parallel (BENCH_REPS=5 BENCH_ONLY=w1,w2)
	@missing=""; for pair in $(BENCH_PEERS); do \
	    command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing the benchmark's peers:$$missing"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	@$(BYTECODE)
	$(PY) bench/run_bench.py

clean: ## remove .venv, .worktrees and the files the examples generate
	rm -rf $(VENV) $(WORKTREES) build dist *.egg-info .hypothesis .pytest_cache $(GENERATED)
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

FORCE:
