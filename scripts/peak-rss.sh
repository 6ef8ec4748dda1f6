#!/usr/bin/env bash
# Sample a process's private memory (RssAnon: heap, not the shared buffers it maps)
# every 20 ms until it exits or STOPFILE appears; write the peak in kB to OUT.
#   peak-rss.sh PID OUT STOPFILE
set -u
pid=$1 out=$2 stop=$3 peak=0
while [ ! -e "$stop" ] && kill -0 "$pid" 2>/dev/null; do
    kb=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$peak" ] && peak=$kb && echo "$peak" >"$out"
    sleep 0.02
done
