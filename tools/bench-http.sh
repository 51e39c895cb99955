#!/usr/bin/env bash
# Gateway throughput with wrk (Debian package `wrk`) against the release server on
# 127.0.0.1: GET /health, an authenticated GET /api/ship/{id}/stats, and login
# (argon2id at the default OWASP cost, which bounds it by design).
#
#   tools/bench-http.sh [SECONDS] [CONNECTIONS]
#
# Rate limits are off for the run (one IP would otherwise be throttled by design).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
conns=${2:-64}
command -v wrk > /dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }

cargo build --release --bins --quiet
dir=$(mktemp -d)
http=127.0.0.1:18180
./target/release/warpcore --udp-addr 127.0.0.1:17177 --http-addr $http --database "$dir/http.db" \
  --no-http-rate-limits --log warn > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "http://$http/health" > /dev/null && break; sleep 0.1; done

creds='{"username":"wrk_pilot","password":"correct horse battery"}'
ship=$(curl -s "http://$http/api/auth/register" -H 'content-type: application/json' -d "$creds" \
  | sed -n 's/.*"ship_id":\([0-9]*\).*/\1/p')
token=$(curl -s "http://$http/api/auth/login" -H 'content-type: application/json' -d "$creds" \
  | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$ship" ] && [ -n "$token" ] || { echo "could not register/login" >&2; exit 1; }

cat > "$dir/login.lua" <<LUA
wrk.method = "POST"
wrk.body = '$creds'
wrk.headers["Content-Type"] = "application/json"
LUA

echo "## GET /health"
wrk -t2 -c"$conns" -d"${seconds}s" --latency "http://$http/health"
echo "## GET /api/ship/$ship/stats (Bearer JWT)"
wrk -t2 -c"$conns" -d"${seconds}s" --latency -H "Authorization: Bearer $token" "http://$http/api/ship/$ship/stats"
echo "## POST /api/auth/login (argon2id m=19456 KiB t=2)"
wrk -t2 -c8 -d"${seconds}s" --latency -s "$dir/login.lua" "http://$http/api/auth/login"
