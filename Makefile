# Entry points for developers and CI (.ci/run runs `make test`).
# Everything installs what it needs first (`make setup`, idempotent and quick).
.PHONY: setup fixture build install test test-unit test-pg test-e2e test-worker test-stress test-synapse test-memory demo bench lint clean-clusters

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Install/verify the toolchain and build the Synapse schema fixture (idempotent).
setup:
	bash scripts/setup.sh

# Only (re)build .cache/synapse/schema.sql from the pinned Synapse wheel.
fixture:
	bash scripts/setup.sh fixture

build: setup
	cargo build --release -p synapse_compress_core --bins

# Install the extension into the PostgreSQL that $(PG_CONFIG) belongs to.
install: setup
	PG_CONFIG=$(PG_CONFIG) bash scripts/install.sh

# Every test: the pure core, the in-database #[pg_test]s, the end-to-end suites (SQL
# cases, the background worker, concurrency stress and faults, a real Synapse).
test: setup lint test-unit test-pg test-e2e test-worker test-stress test-synapse test-memory

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-unit:
	cargo test -p synapse_compress_core

# pgrx's own test cluster; initdb refuses root, so it runs as postgres when root.
test-pg:
	bash scripts/pgrx-test.sh

test-e2e: install build
	bash pgrx-tests/run.sh

# The background worker in a cluster with shared_preload_libraries.
test-worker: install build
	bash pgrx-tests/worker.sh

# compress_room racing a simulation of Synapse's own state transactions (random
# rounds, then forced interleavings), and faults (kill -9, cancel, statement_timeout,
# injected write errors); ~6 minutes. All three run; any failure fails the target.
test-stress: install build
	rc=0; \
	bash pgrx-tests/stress/run.sh || rc=1; \
	bash pgrx-tests/stress/races.sh || rc=1; \
	bash pgrx-tests/stress/faults.sh || rc=1; \
	exit $$rc

# The memory ceiling: backend RssAnon under synapse_compress.memory_limit; ~10 minutes.
test-memory: install
	bash pgrx-tests/memory/run.sh

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

clean-clusters:
	for c in e2e demo worker stress bench synapse-e2e; do \
		bash scripts/cluster.sh stop /tmp/synapse_compress/$$c || true; done
