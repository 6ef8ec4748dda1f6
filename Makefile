# Entry points for developers and CI (.ci/run runs `make test`).
# Everything installs what it needs first (`make setup`, idempotent and quick).
.PHONY: setup fixture generator build install test test-unit test-pg test-regress test-isolation test-e2e test-worker test-security test-stress test-synapse test-memory demo bench bench-core lock-waits lint clean-clusters

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
export PG_CONFIG
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Install/verify the toolchain and build the Synapse schema fixture (idempotent).
setup:
	bash scripts/setup.sh

# Only (re)build .cache/synapse/schema.sql from the pinned Synapse wheel.
fixture:
	bash scripts/setup.sh fixture

# The test-data generator target/release/synapse-compress-gen (testkit crate); the
# extension itself is built by `install`. `build` is its old name, kept as an alias.
generator build: setup
	cargo build --release -p synapse_compress_testkit --bins

# Install the extension into the PostgreSQL that $(PG_CONFIG) belongs to.
install: setup
	PG_CONFIG=$(PG_CONFIG) bash scripts/install.sh

# Every test: the pure core, the in-database #[pg_test]s, PostgreSQL's own test tools
# (pg_regress: errors, hints and notices; pg_isolation_regress: forced interleavings
# with Synapse's transactions), the end-to-end suites (SQL cases, the background
# worker, least privilege, concurrency stress and faults, a real Synapse, memory).
test: setup lint test-unit test-pg test-regress test-isolation test-e2e test-worker test-security test-stress test-synapse test-memory

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-unit:
	cargo test -p synapse_compress_core -p synapse_compress_testkit

# pgrx's own test cluster; initdb refuses root, so it runs as postgres when root.
test-pg:
	bash scripts/pgrx-test.sh

# pg_regress: expected output of pgrx-tests/regress/sql/*.sql (messages, SQLSTATEs, hints).
test-regress: install
	bash pgrx-tests/regress/run.sh

# pg_isolation_regress: pgrx-tests/isolation/specs/*.spec, compress_room against
# Synapse's deletion and purge in fixed interleavings.
test-isolation: install
	bash pgrx-tests/isolation/run.sh

test-e2e: install build
	bash pgrx-tests/e2e/run.sh

# The background worker in a cluster with shared_preload_libraries.
test-worker: install build
	bash pgrx-tests/worker/run.sh

# Least privilege: Synapse's role plants triggers, a rule and look-alike functions;
# superuser calls and the worker must never run them with more rights than that role.
test-security: install build
	bash pgrx-tests/security/run.sh

# compress_room racing a simulation of Synapse's own state transactions (random
# rounds; the forced interleavings are test-isolation), and faults (kill -9, cancel,
# statement_timeout, injected write errors), each struck where the run is held on a
# lock the test holds. Both run; any failure fails the target.
test-stress: install build
	rc=0; \
	bash pgrx-tests/stress/run.sh || rc=1; \
	bash pgrx-tests/stress/faults.sh || rc=1; \
	exit $$rc

# The memory ceiling: backend RssAnon under synapse_compress.memory_limit. make test runs
# the 50,000-member room; MEMORY_ROOMS="50000 200000" adds the 200,000-member one (slow).
test-memory: install build
	MEMORY_ROOMS="$${MEMORY_ROOMS:-50000}" bash pgrx-tests/memory/run.sh

# Against a real Synapse 1.163.2 (its venv: scripts/setup-synapse.sh); ~4 minutes.
test-synapse: install build
	bash pgrx-tests/synapse/run.sh

# The main job on a throwaway cluster: a generated Synapse room compressed.
demo: install build
	bash scripts/demo.sh

# Side by side with the existing tool and the raw limit; writes BENCHMARKS.md.
#   make bench BENCH_ARGS='--scale 0.05 --only headline,forks --no-tool'
bench: install build
	bash scripts/bench.sh $(BENCH_ARGS)

# How long Synapse's writers wait on a running compress_database (p50/p99/max).
lock-waits: install build
	bash scripts/lock-waits.sh $(SCALE)

# The planner alone on generated rooms (criterion, no PostgreSQL); ~1 minute.
#   make bench-core BENCH_CORE_ARGS='--quick'
bench-core:
	cargo bench -p synapse_compress_core --bench plan_chunk -- $(BENCH_CORE_ARGS)

clean-clusters:
	for c in e2e demo worker stress bench synapse-e2e regress isolation security lock-waits; do \
		bash scripts/cluster.sh stop /tmp/synapse_compress/$$c || true; done
