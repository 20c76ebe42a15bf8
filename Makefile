# cloud-backup: every command a user needs. `make backup DIR=/abs/path` and `make test` install
# what they need first (a venv with the pinned requirements, Azurite from package-lock.json).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(PY) -m cloud_backup.local.cli
export PYTHONPATH := $(CURDIR)/include

.PHONY: install backup restore start stop status test test-fast constraints bench bench-scale bench-stack

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	@echo "Installing Python requirements into $(VENV) ..." >&2
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
	@touch $@

node_modules/.installed: package.json package-lock.json
	@echo "Installing Azurite (npm ci) ..." >&2
	@npm ci --no-audit --no-fund --loglevel=error >&2
	@touch $@

backup: install
	@test -n "$(DIR)" || { echo "usage: make backup DIR=/absolute/path [CONTAINER=backups] [PREFIX=]" >&2; exit 2; }
	@$(CLI) backup "$(DIR)"

restore: install
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make restore FROM=/dir/that/was/backed/up TO=/absolute/target [OVERWRITE=1] [SUB_PATH=rel/path]" >&2; exit 2; }
	@$(CLI) restore "$(FROM)" "$(TO)"

start: install
	@$(CLI) start

stop:
	@if [ -x $(PY) ]; then $(CLI) stop; else echo "nothing to stop" >&2; fi

status:
	@$(CLI) status

# Everything, the fault-injection suite (marker `faults`) included: this is what CI runs.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS)

# Without the slow end-to-end tests (markers `e2e`, `faults`), for a quick loop while editing.
test-fast: install
	@$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# Refresh constraints.txt from a clean venv after changing requirements.txt.
constraints:
	rm -rf /tmp/cloud-backup-constraints && $(PYTHON) -m venv /tmp/cloud-backup-constraints
	/tmp/cloud-backup-constraints/bin/pip install --quiet $$(grep -v '^[-#]' requirements.txt)
	{ head -2 constraints.txt; /tmp/cloud-backup-constraints/bin/pip freeze; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Benchmarks (not part of `make test`); see bench/README.md. They install their own tools under
# bench/.tools/ and bring the local stack up before timing anything.
# The benchmarks run their own stack (state in .state-bench, API 8090, Azurite 10010), started on
# an empty Azurite: Azurite slows down as its on-disk metadata grows (2,000 small files: 145 files/s
# on a fresh one, 19 files/s on one holding earlier backups), which would skew every contender.
BENCH_ENV := CLOUD_BACKUP_STATE=$(CURDIR)/.state-bench CLOUD_BACKUP_API_PORT=8090 CLOUD_BACKUP_AZURITE_PORT=10010

bench-stack: install
	@$(BENCH_ENV) $(CLI) stop >/dev/null
	@rm -rf .state-bench/azurite
	@$(BENCH_ENV) $(CLI) start

bench: bench-stack
	@bash bench/install_tools.sh
	@$(BENCH_ENV) $(PY) bench/run_bench.py

bench-scale: bench-stack
	@$(BENCH_ENV) $(PY) bench/scale.py
