# One entry point per chore. `bash scripts/bootstrap.sh` (or scripts/test.sh) creates .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
UNIOBS := $(VENV)/bin/uniobs
PYTEST_ARGS ?=
# Cold starts per shrink-wrap in `make demo` (scripts/demo.sh); CI's fresh-clone run sets 1.
UNIOBS_DEMO_RUNS ?= 3
# The Nanos side of `make demo` needs a Nanos toolchain: NANOS_DIR, else ~/.ops/<version>/ as `ops`
# installs it. This repository's CI and machines have none installed: they have the test copy beside
# the checkout (../shared/unikernels/nanos), which the demo uses when it is there and NANOS_DIR is unset.
# Elsewhere the Nanos side is skipped, and the report says why.
SHARED_NANOS := $(abspath ../shared/unikernels/nanos)
NANOS_DIR ?= $(if $(wildcard $(SHARED_NANOS)/mkfs),$(SHARED_NANOS))

.PHONY: setup check lint test bench demo guests describe readme clean

setup:
	bash scripts/bootstrap.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test:
	$(PY) -m pytest $(PYTEST_ARGS)

check: lint test

bench:
	$(PY) bench/pipeline_bench.py
	$(PY) bench/console_bench.py
	$(PY) bench/vmm_bench.py
	$(PY) bench/cgroup_bench.py
	$(PY) bench/coldstart_bench.py
	$(PY) bench/agent_bench.py

guests:
	$(MAKE) -C examples/minikernel
	$(MAKE) -C examples/hello-node/unikernel

describe:
	$(UNIOBS) describe --format markdown

demo:
	mkdir -p out
	$(if $(NANOS_DIR),NANOS_DIR=$(NANOS_DIR) )$(UNIOBS) compare examples/hello-node/function.toml \
	  --runs $(UNIOBS_DEMO_RUNS) --out out/compare
	@echo "the comparison: out/compare/report.html (open it in a browser), report.md, results.json;"
	@echo "every signal of every run as OTLP JSON lines: out/compare/telemetry.jsonl"

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
	$(MAKE) -C examples/minikernel clean
	$(MAKE) -C examples/hello-node/unikernel clean
	$(MAKE) -C examples/hello-node/nanos clean

readme:
	$(PY) scripts/update_readme.py
