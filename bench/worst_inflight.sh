#!/usr/bin/env bash
# The worst record through a running gateway (issue 22): memory above idle while two are in
# flight, the gateway's CPU time per worst record (bytes to answer), and how long a valid record
# takes while two worst records are in flight. Release build, development PKI, one park endpoint,
# everything on loopback; curl as the sender.
#
#   bench/worst_inflight.sh                 # builds, then ~1 min
#   ROUNDS=20 SKIP_BUILD=1 bench/worst_inflight.sh
#   WORST=review SKIP_BUILD=1 bench/worst_inflight.sh
#
# WORST chooses the worst record (benches/worst_records.rs builds the same ones):
#   at-limit (default): the quantum-equipment shipment with `body.items` holding `{"x":0}` items up
#     to the 20,000 values `limits.max_json_values` allows: the most memory a record the gateway
#     parses can cost (a one-member map per two values), 422 schema_violation;
#   deep: the shipment's items replaced by objects nested to the depth limit (a chain of
#     one-member maps, the most memory per value), as many as the value limit allows, 422;
#   review: the same shipment with 348,391 empty objects as items (1,047,047 bytes, the record of
#     issue 22), now refused 400 json_too_many_values before it is parsed.
#
# Output: a few lines of figures on stdout; logs in $OUT (default target/bench-worst/<time>).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/bench-worst/$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-10}
WORST=${WORST:-at-limit}
MAX_VALUES=${MAX_VALUES:-20000}
GW_PORT=${GW_PORT:-18443}
GW_ADMIN=${GW_ADMIN:-18444}
EP_PORT=${EP_PORT:-18445}
log() { echo "worst_inflight: $*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building (release): gateway, park endpoint"
    (cd "$ROOT" && cargo build --release --quiet --bin hetao-gateway --example park_endpoint)
fi
BIN=${GATEWAY_BIN:-$TARGET/release/hetao-gateway}
ENDPOINT=$TARGET/release/examples/park_endpoint
mkdir -p "$OUT"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "$2 did not start listening on $1"; exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_MS=$((1000 / $(getconf CLK_TCK)))

PKI=$OUT/pki
"$BIN" certs init --out "$PKI" >/dev/null
CONF=$PKI/gateway.toml
sed -i -e "s#127.0.0.1:8443#127.0.0.1:$GW_PORT#" -e "s#127.0.0.1:9443#127.0.0.1:$GW_ADMIN#" \
    -e "s#https://127.0.0.1:9002#https://127.0.0.1:$EP_PORT#" "$CONF"
"$ENDPOINT" --listen "127.0.0.1:$EP_PORT" --cert "$PKI/hk-endpoint.pem" \
    --key "$PKI/hk-endpoint.key" --client-ca "$PKI/gateway-ca.pem" >"$OUT/endpoint.log" 2>&1 &
PIDS+=($!)
wait_port "$EP_PORT" "park endpoint"
"$BIN" serve --config "$CONF" >"$OUT/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$GW_PORT" "gateway"

# Records: valid ones with fresh ids and times, and the worst one (see WORST above).
RECORDS=$OUT/records
mkdir -p "$RECORDS"
python3 - "$ROOT/examples/records/data-sz-hk-gba-clinical-followup.json" \
    "$ROOT/examples/records/materials-sz-hk-quantum-equipment.json" "$RECORDS" "$ROUNDS" \
    "$WORST" "$MAX_VALUES" <<'EOF'
import json, sys, uuid, datetime
valid_src, shipment_src, out, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
worst_kind, max_values = sys.argv[5], int(sys.argv[6])
def values(v):
    if isinstance(v, dict):
        return 1 + sum(values(x) for x in v.values())
    if isinstance(v, list):
        return 1 + sum(values(x) for x in v)
    return 1
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
valid = json.load(open(valid_src))
for i in range(2 * rounds + 5):
    valid["record_id"], valid["created_at"] = str(uuid.uuid4()), now
    json.dump(valid, open(f"{out}/valid-{i}.json", "w"), separators=(",", ":"))
worst = json.load(open(shipment_src))
worst["created_at"] = now
if worst_kind == "review":
    worst["body"]["items"] = [{}] * 348391
elif worst_kind == "at-limit":
    worst["body"]["items"] = []
    worst["body"]["items"] = [{"x": 0}] * ((max_values - values(worst)) // 2)
elif worst_kind == "deep":
    # The record is level 1, `body` 2, `items` 3, each item 4: 28 more levels below an item.
    deep = {"end": True}
    for _ in range(32 - 5):
        deep = {"a": deep}
    item = {"description": deep}
    worst["body"]["items"] = []
    worst["body"]["items"] = [item] * ((max_values - values(worst)) // values(item))
else:
    sys.exit(f"WORST={worst_kind}: at-limit, deep or review")
for i in range(2):
    worst["record_id"] = str(uuid.uuid4())
    json.dump(worst, open(f"{out}/worst-{i}.json", "w"), separators=(",", ":"))
EOF
SENDER_CERT=$(ls "$PKI"/orgs/sz-*.pem | head -n1)
send() { # file -> "status seconds handshake-done-seconds"
    curl -s -o /dev/null -w '%{http_code} %{time_total} %{time_appconnect}\n' --cacert "$PKI/gateway-ca.pem" \
        --cert "$SENDER_CERT" --key "${SENDER_CERT%.pem}.key" -H 'content-type: application/json' \
        --data-binary "@$1" "https://127.0.0.1:$GW_PORT/v1/records"
}

# Warm up, then idle.
for i in 0 1 2 3 4; do send "$RECORDS/valid-$((ROUNDS + i)).json" >/dev/null; done
sleep 1
IDLE=$(rss_kb "$GW")
log "idle RSS ${IDLE} KiB"

# The same number of valid records with nothing else in flight: what the machine gives a valid
# record at the moment (the VM is shared), to set the figures below against.
: >"$OUT/alone.txt"
for r in $(seq 0 $((ROUNDS - 1))); do
    send "$RECORDS/valid-$((ROUNDS + 5 + r)).json" >>"$OUT/alone.txt"
    sleep 0.05
done

CPU0=$(cpu_ticks "$GW")
: >"$OUT/valid.txt"
: >"$OUT/worst.txt"
for r in $(seq 0 $((ROUNDS - 1))); do
    send "$RECORDS/worst-0.json" >>"$OUT/worst.txt" &
    W0=$!
    send "$RECORDS/worst-1.json" >>"$OUT/worst.txt" &
    W1=$!
    # While both are being uploaded and examined.
    sleep 0.02
    send "$RECORDS/valid-$r.json" >>"$OUT/valid.txt"
    wait "$W0" "$W1"
done
CPU1=$(cpu_ticks "$GW")
PEAK=$(hwm_kb "$GW")
# The valid records' CPU is part of the total; valid alone costs well under a millisecond.
echo "worst record: $WORST, $(wc -c <"$RECORDS/worst-0.json") bytes"
echo "rounds: $ROUNDS (two worst records and one valid record each)"
echo "worst answers: $(cut -d' ' -f1 "$OUT/worst.txt" | sort | uniq -c | xargs)"
echo "worst seconds: $(cut -d' ' -f2 "$OUT/worst.txt" | sort -n | xargs)"
echo "valid seconds (nothing else in flight): $(cut -d' ' -f2 "$OUT/alone.txt" | sort -n | xargs)"
echo "valid answers: $(cut -d' ' -f1 "$OUT/valid.txt" | sort | uniq -c | xargs)"
echo "valid seconds (two worst in flight): $(cut -d' ' -f2 "$OUT/valid.txt" | sort -n | xargs)"
echo "  of which connect and TLS handshake: $(cut -d' ' -f3 "$OUT/valid.txt" | sort -n | xargs)"
echo "gateway CPU per worst record: $(((CPU1 - CPU0) * TICK_MS / (2 * ROUNDS))) ms"
echo "gateway RSS idle ${IDLE} KiB, peak ${PEAK} KiB: $(((PEAK - IDLE) / 1024)) MiB above idle with two in flight"
