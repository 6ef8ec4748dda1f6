# Sourced by the stress scripts: the stress cluster ($DIR, $PORT) started with the
# settings they need, and stopped with any background jobs when the script exits
# (left running with KEEP=1). STRESS_PRELOAD=1 loads the library at server start,
# with its worker off.
stress_cluster() {
    local conf=("max_connections = 60" "$@")
    if [ "${STRESS_PRELOAD:-0}" = 1 ]; then
        conf+=("shared_preload_libraries = 'synapse_compress'" "synapse_compress.workers = 0")
    fi
    bash scripts/cluster.sh stop "$DIR" >/dev/null   # so these settings apply
    bash scripts/cluster.sh start "$DIR" "$PORT" "${conf[@]}" >/dev/null
    eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
    trap stress_cleanup EXIT
}

stress_cleanup() {
    local pids
    pids=$(jobs -pr)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1 || true
}
