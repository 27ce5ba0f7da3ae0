#!/bin/bash
# Where a command's memory peaks: its resident set sampled every 0.5 s.
#
#   bash benchmarks/studies/rss_trace.sh LOG -- COMMAND...
#   e.g. bash benchmarks/studies/rss_trace.sh rss.log -- \
#        .venv/bin/python -m gpupipe.cli dedup .bench/scale/n1000000/shards --out /tmp/mem1m-run --device cpu
#
# Writes LOG: one line per sample, "seconds-since-start VmRSS-kB VmHWM-kB" (from
# /proc/PID/status), then "rc N"; the command's output goes to LOG.stdout.  Put the
# samples beside the stage times the command reports (gpupipe's summary.json
# "seconds") to see which stage holds the peak.  RESULTS.md §27.
set -u
log=$1; shift
[ "${1:-}" = "--" ] && shift
rm -f "$log"
start=$(date +%s.%N)
"$@" > "$log.stdout" 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  now=$(date +%s.%N)
  rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
  hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null)
  [ -n "$rss" ] && echo "$(echo "$now - $start" | bc) $rss $hwm" >> "$log"
  sleep 0.5
done
wait $pid
echo "rc $?" >> "$log"
