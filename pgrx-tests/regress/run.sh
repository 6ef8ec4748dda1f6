#!/usr/bin/env bash
# pg_regress on pgrx-tests/regress (see pgrx-tests/pgtools.sh): bash pgrx-tests/regress/run.sh [TEST...]
exec bash "$(dirname "$0")/../pgtools.sh" regress "$@"
