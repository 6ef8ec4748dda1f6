#!/usr/bin/env bash
# pg_isolation_regress on pgrx-tests/isolation (see pgrx-tests/pgtools.sh): bash pgrx-tests/isolation/run.sh [TEST...]
exec bash "$(dirname "$0")/../pgtools.sh" isolation "$@"
