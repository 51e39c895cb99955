#!/usr/bin/env bash
# End-to-end scenario: start the release server, run warpcore-swarm at each client
# count, sample the server's CPU and memory while it runs, and print a markdown table
# (also written to target/bench-e2e/results.md).
#
#   tools/bench-e2e.sh [SECONDS] [CLIENTS...]      e.g. tools/bench-e2e.sh 60 1000 5000 10000
#
# Everything runs on 127.0.0.1 on ports 17777/18080, with a temporary SQLite file.
# The bots' accounts and connect tokens are minted in bulk by the admin route (a
# thousand per request, no argon2 login per bot) and the gateway rate limits are off
# (every bot shares one IP): the scenario measures the game path, not login
# throughput. The swarm runs on the same machine as the server.
#
# BEHAVIOUR (default roam) is passed to --behaviour, e.g. BEHAVIOUR=battle.
# RATES (default 10,10,10) is the server's --replication-rates-hz (idle, moving,
# fighting): the headline scenario (issue 8) has every client receiving snapshots at
# 10 Hz; RATES=10,20,60 runs the server's own defaults instead.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
clients=("$@")
behaviour=${BEHAVIOUR:-roam}
rates=${RATES:-10,10,10}
admin_key=bench-e2e-admin-key-$$-$RANDOM
[ ${#clients[@]} -gt 0 ] || clients=(1000 5000 10000)

cargo build --release --bins --quiet
bin=${CARGO_TARGET_DIR:-target}/release
out=target/bench-e2e
mkdir -p "$out"
results=$out/results.md
udp=127.0.0.1:17777
http=127.0.0.1:18080
hz=$(getconf CLK_TCK)

{
  echo "Behaviour $behaviour, snapshot rates (idle, moving, fighting) $rates Hz, $seconds s per run."
  echo
  echo "| clients | connected | disconnects | rtt p50 / p99 / max (ms) | snapshots/s per bot | rx bytes/s per client p50 / p99 | server tick p50 / p99 / max (ms) | replicate phase p50 / p99 (ms) | egress phase p50 / p99 (ms) | command latency p50 / p99 (ms) | server UDP packets/s in / out (of which keepalives) / dropped by the kernel | server CPU (% of one core) | server RSS (MB) | RSS per client (KB) |"
  echo "|---:|---:|---:|---|---:|---|---|---|---|---|---|---:|---:|---:|"
} > "$results"

for n in "${clients[@]}"; do
  db=$(mktemp -d)/bench.db
  "$bin/warpcore" --udp-addr $udp --http-addr $http --database "$db" \
    --argon2-m-kib 1024 --argon2-t 1 --max-clients $((n + 100)) --admin-api-key "$admin_key" \
    --udp-source-requests-per-s 100000 --no-http-rate-limits --replication-rates-hz "$rates" \
    --log warn > "$out/server-$n.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -sf "http://$http/health" > /dev/null && break
    sleep 0.1
  done
  rss_idle_kb=$(awk '/VmRSS/ {print $2}' /proc/$server/status)

  # Sample the server every second while the swarm runs: peak RSS, CPU ticks.
  ( peak=0
    while kill -0 $server 2>/dev/null; do
      r=$(awk '/VmRSS/ {print $2}' /proc/$server/status 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" > "$out/peak-$n"
      sleep 1
    done ) &
  sampler=$!

  cpu_start=$(awk '{print $14 + $15}' /proc/$server/stat)
  t_start=$(date +%s.%N)
  "$bin/warpcore-swarm" --http "http://$http" --clients "$n" --seconds "$seconds" \
    --threads 2 --quiet --connect-timeout 60 --behaviour "$behaviour" \
    --admin-key "$admin_key" > "$out/swarm-$n.txt" 2>&1 || true
  t_end=$(date +%s.%N)
  cpu_end=$(awk '{print $14 + $15}' /proc/$server/stat)

  kill -TERM $server
  wait $server || true
  kill $sampler 2>/dev/null || true
  trap - EXIT

  peak_kb=$(cat "$out/peak-$n" 2>/dev/null || echo "$rss_idle_kb")
  cpu_pct=$(awk -v a="$cpu_start" -v b="$cpu_end" -v t0="$t_start" -v t1="$t_end" -v hz="$hz" \
    'BEGIN { printf "%.0f", 100 * (b - a) / hz / (t1 - t0) }')
  s=$out/swarm-$n.txt
  connected=$(sed -n 's/.*| connected: \([0-9]*\) .*/\1/p' "$s")
  disconnects=$(sed -n 's/.*disconnects in flight: \([0-9]*\).*/\1/p' "$s")
  rtt=$(awk '$1 == "rtt" { gsub(/ms/, ""); split($3,a,"="); split($5,b,"="); split($7,c,"="); printf "%s / %s / %s", a[2], b[2], c[2] }' "$s")
  snaps=$(sed -n 's/.*(\([0-9.]*\)\/s per bot).*/\1/p' "$s")
  rx=$(awk '$1 == "rx" { split($6,a,"="); split($8,b,"="); printf "%s / %s", a[2], b[2] }' "$s")
  tick=$(awk '$1 == "server" && $2 == "tick" { gsub(/ms/, ""); split($3,a,"="); split($4,b,"="); split($5,c,"="); printf "%s / %s / %s", a[2], b[2], c[2] }' "$s")
  cmd=$(awk '$1 == "server" && $2 == "command" { gsub(/ms/, ""); split($4,a,"="); split($5,b,"="); printf "%s / %s", a[2], b[2] }' "$s")
  pps=$(awk '$1 == "server" && $2 == "udp" { split($4,a,"="); split($5,b,"="); split($6,k,"="); split($7,c,"="); printf "%s / %s (%s) / %s", a[2], b[2], k[2], c[2] }' "$s")
  # The server prints its percentile table on SIGTERM: a phase's p50 and p99.
  phase() {
    awk -v phase="phase=$1" 'index($0, phase) { for (i = 1; i <= NF; i++) { if ($i ~ /^p50=/) { sub(/p50=/, "", $i); p50 = ($i == "" ? $(i+1) : $i) } if ($i ~ /^p99=/) { sub(/p99=/, "", $i); p99 = ($i == "" ? $(i+1) : $i) } } gsub(/ms/, "", p50); gsub(/ms/, "", p99); printf "%s / %s", p50, p99 }' "$out/server-$n.log"
  }
  repl=$(phase replicate)
  egress=$(phase egress)
  per_client=$(awk -v p="$peak_kb" -v i="$rss_idle_kb" -v n="$n" 'BEGIN { printf "%.1f", (p - i) / n }')
  echo "| $n | ${connected:-?} | ${disconnects:-?} | ${rtt:-?} | ${snaps:-?} | ${rx:-?} | ${tick:-?} | ${repl:-?} | ${egress:-?} | ${cmd:-?} | ${pps:-?} | $cpu_pct | $((peak_kb / 1024)) | $per_client |" >> "$results"
done

cat "$results"
echo
echo "(swarm output: $out/swarm-N.txt; server logs: $out/server-N.log)"
