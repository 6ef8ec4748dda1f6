# Entry points for developers and CI (.ci/run runs `make test`).
# Everything installs what it needs first (`make setup`, idempotent and quick).
.PHONY: setup fixture build install test test-unit test-pg test-e2e demo lint clean-clusters

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
	cargo pgrx install --release --pg-config $(PG_CONFIG)

# Every test: the pure core, the in-database #[pg_test]s, the end-to-end suite.
test: setup lint test-unit test-pg test-e2e

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

# The main job on a throwaway cluster: a generated Synapse room compressed.
demo: install build
	bash scripts/demo.sh

clean-clusters:
	bash scripts/cluster.sh stop /tmp/synapse_compress/e2e || true
	bash scripts/cluster.sh stop /tmp/synapse_compress/demo || true
