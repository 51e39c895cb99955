#!/usr/bin/env bash
# Checks the live gateway against its own OpenAPI document with schemathesis
# (property-based: generated requests, every answer checked against the spec).
#
# Starts `cargo run --bin warpcore` on fixed test ports (HTTP 127.0.0.1:18480, UDP
# 127.0.0.1:18477) with a temporary SQLite file and cheap argon2 settings, waits for
# /health, runs schemathesis with a bounded number of examples per operation, and
# stops the server whatever happens. schemathesis is installed into a venv under
# target/ the first time (idempotent). Run from anywhere; CI runs it from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_ADDR="${SCHEMATHESIS_HTTP_ADDR:-127.0.0.1:18480}"
UDP_ADDR="${SCHEMATHESIS_UDP_ADDR:-127.0.0.1:18477}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
VENV="$PWD/target/schemathesis-venv"

if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis>=4,<5"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --bin warpcore
cargo run --quiet --bin warpcore -- \
    --http-addr "$HTTP_ADDR" --udp-addr "$UDP_ADDR" \
    --database "$WORK/schemathesis.db" \
    --argon2-m-kib 64 --argon2-t 1 --log warn \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 100); do
    if curl -fsS "http://$HTTP_ADDR/health" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "schemathesis.sh: the server exited early:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "http://$HTTP_ADDR/health" >/dev/null

# Every check (status codes, content types, headers and bodies as the document
# promises; no 5xx) except positive_data_acceptance: some rules span fields
# (`from` != `to` of a transfer) and OpenAPI cannot say so, so a schema-valid body
# may rightly get 400. While no game is attached to the gateway (`engine: null` in
# /health), the game routes answer their documented 503 GAME_UNAVAILABLE, so the
# no-5xx check is skipped; it runs as soon as the server attaches its game.
EXCLUDE="positive_data_acceptance"
if curl -fsS "http://$HTTP_ADDR/health" | grep -q '"engine":null'; then
    echo "schemathesis.sh: no game attached: skipping not_a_server_error" >&2
    EXCLUDE="$EXCLUDE,not_a_server_error"
fi
# From the temporary directory: schemathesis keeps its example database in the
# working directory, which must not be the repository.
(cd "$WORK" && "$VENV/bin/schemathesis" run "http://$HTTP_ADDR/openapi.json" \
    --checks all \
    --exclude-checks "$EXCLUDE" \
    --max-examples "$MAX_EXAMPLES" \
    --generation-deterministic \
    --request-timeout 10)
