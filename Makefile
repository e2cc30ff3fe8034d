# otlp-ingest: every command a newcomer needs. Each target installs what it uses first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint bench fuzz soak tools clean

$(STAMP): pyproject.toml setup.py $(wildcard otlp_ingest/*/_*.c)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: install into .venv and start the server (gRPC :4317, HTTP :4318, admin :8888);
##      ARGS passes flags, e.g. make run ARGS="--config otlp.yaml"
ARGS ?=
run: $(STAMP)
	$(PY) -m otlp_ingest serve $(ARGS)

## tools: Debian packages the tests use (promtool, prometheus, shellcheck, kubectl; chromium for the status page)
tools:
	bash scripts/install-test-tools.sh

## image: build the container image with podman on a Debian base made locally with debootstrap
##        (no Docker daemon or registry needed; scripts/build-image.sh --help for the details)
.PHONY: image
image:
	bash scripts/build-image.sh

## test: install everything, lint, and run the whole test suite
test: $(STAMP) tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

## lint: ruff only
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

## bench: micro benchmarks (pytest-benchmark) and the end-to-end run against rotel (the Rust peer,
##        installed from its wheel) in the same run; results in benchmarks/results/
bench: $(BENCH_STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-columns=min,median,ops -p no:randomly
	$(PY) benchmarks/run_e2e.py

## fuzz: the decoders under hypothesis for OTLP_FUZZ_SECONDS (default 300): rounds of OTLP_FUZZ_EXAMPLES
##       examples per test (default 2000), a fresh seed per round (printed, so a failure can be replayed)
fuzz: $(STAMP)
	@end=$$(( $$(date +%s) + $${OTLP_FUZZ_SECONDS:-300} )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
		round=$$((round + 1)); seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
		echo "fuzz round $$round, --hypothesis-seed=$$seed"; \
		OTLP_FUZZ_EXAMPLES=$${OTLP_FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q \
			--hypothesis-seed=$$seed tests/fuzz || exit 1; \
	done; echo "fuzz: $$round rounds, no failure"

## soak: the fault suite's long forms (longer load, more kills, a minutes-long outage), the WAL crash
##       tests, then the overload benchmark (RSS under the memory limit for 30 s)
soak: $(STAMP)
	OTLP_SOAK=1 $(PY) -m pytest -q -s tests/faults tests/integration/test_wal_crash.py
	$(PY) benchmarks/overload_memory.py

clean:
	rm -rf $(VENV) otlp-data .pytest_cache .ruff_cache .benchmarks
