# Velvet: `make demo` runs the main job, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: all deps bpf demo test lint typecheck unit datapath e2e conformance bench bench-quick clean

all: bpf

deps:
	@./scripts/setup.sh

bpf: deps
	@$(PY) -m velvet.datapath.build

demo: bpf
	@$(VENV)/bin/velvet demo $(ARGS)

lint: deps
	@$(VENV)/bin/ruff check .

typecheck: deps
	@$(VENV)/bin/mypy

# Privileged tests fail without root, so refuse up front instead of after installing and building.
test:
	$(if $(filter-out 0,$(shell id -u)),$(error make test needs root (BPF, network namespaces, cgroups): \
	  run it as root, or only the unprivileged tests with $(VENV)/bin/pytest -m "not privileged" tests))
	@$(MAKE) --no-print-directory bpf lint typecheck
	@$(VENV)/bin/pytest -q -p no:cacheprovider tests

# Byte-compiled first, as an installed package is: the CLI and agent starts measured are not compiles.
bench: bpf
	@$(VENV)/bin/pip install -q -e '.[dev,bench]'
	@$(PY) -m compileall -q src bench
	@$(PY) -m bench.run --out bench/results/full $(ARGS)

bench-quick: bpf
	@$(VENV)/bin/pip install -q -e '.[dev,bench]'
	@$(PY) -m compileall -q src bench
	@$(PY) -m bench.run --quick $(ARGS)

clean:
	rm -rf build
