#!/usr/bin/env bash
# postern end to end, narrated: two network-namespace hosts, a port closed by
# posternd's nftables table, one knock from `postern`, the port opens, then the
# kernel closes it again when the grant's timeout runs out.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${DEMO_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh demo
echo "demo.sh: building postern and posternd (3-5 minutes the first time)"
cargo build -p spa-client -p spa-server
BIN="$(pwd)/target/debug"

CLIENT=pdemo-client SERVER=pdemo-server
CLIENT_IP=10.231.0.1 SERVER_IP=10.231.0.2 PORT=2222 TIMEOUT=5
WORK=$(mktemp -d)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    [ -n "${SERVICE_PID:-}" ] && kill "$SERVICE_PID" 2>/dev/null || true
    [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
    ip netns del "$CLIENT" 2>/dev/null || true
    ip netns del "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup_ns() { ip netns del "$CLIENT" 2>/dev/null || true; ip netns del "$SERVER" 2>/dev/null || true; }
cleanup_ns

say "Two hosts: $CLIENT ($CLIENT_IP) and $SERVER ($SERVER_IP), joined by a veth pair"
ip netns add "$CLIENT"; ip netns add "$SERVER"
ip link add pdemo-c type veth peer name pdemo-s
ip link set pdemo-c netns "$CLIENT"; ip link set pdemo-s netns "$SERVER"
ip -n "$CLIENT" addr add "$CLIENT_IP/30" dev pdemo-c; ip -n "$SERVER" addr add "$SERVER_IP/30" dev pdemo-s
for ns in "$CLIENT" "$SERVER"; do ip -n "$ns" link set lo up; done
ip -n "$CLIENT" link set pdemo-c up; ip -n "$SERVER" link set pdemo-s up

say "A service on $SERVER_IP:$PORT (think: sshd)"
ip netns exec "$SERVER" python3 -m http.server "$PORT" --bind "$SERVER_IP" >/dev/null 2>&1 &
SERVICE_PID=$!

say "Keys, made like 'fwknop --key-gen'"
"$BIN/postern" --key-gen -K "$WORK/keys"
KEY=$(awk '/^KEY_BASE64/{print $2}' "$WORK/keys"); HMAC=$(awk '/^HMAC_KEY_BASE64/{print $2}' "$WORK/keys")
echo "written to $WORK/keys (mode $(stat -c %a "$WORK/keys"))"

install -m 600 /dev/null "$WORK/access.conf"
cat > "$WORK/access.conf" <<CONF
SOURCE              ANY
KEY_BASE64          $KEY
HMAC_KEY_BASE64     $HMAC
OPEN_PORTS          tcp/$PORT
FW_ACCESS_TIMEOUT   $TIMEOUT
CONF
install -m 600 /dev/null "$WORK/postern.toml"
cat > "$WORK/postern.toml" <<CONF
access_file = "$WORK/access.conf"
[server]
run_dir = "$WORK/run"
[[capture]]
type = "udp"
listen = "0.0.0.0:62201"
[[action]]
type = "nftables"
table = "postern_demo"
protected = ["tcp/$PORT"]
CONF

say "posternd starts in $SERVER: its own nftables table drops tcp/$PORT unless granted"
ip netns exec "$SERVER" "$BIN/posternd" -f -c "$WORK/postern.toml" >"$WORK/posternd.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do grep -q "posternd ready" "$WORK/posternd.log" && break; sleep 0.1; done
grep -q "posternd ready" "$WORK/posternd.log" || { cat "$WORK/posternd.log"; exit 1; }
ip netns exec "$SERVER" nft list table inet postern_demo | sed 's/^/    /'

probe() { ip netns exec "$CLIENT" timeout 1 bash -c "exec 3<>/dev/tcp/$SERVER_IP/$PORT" 2>/dev/null; }
say "Before the knock: connect from $CLIENT to $SERVER_IP:$PORT"
if probe; then echo "OPEN (unexpected)"; exit 1; else echo "closed"; fi

say "Knock: postern -A tcp/$PORT -a $CLIENT_IP -D $SERVER_IP --use-hmac …"
ip netns exec "$CLIENT" "$BIN/postern" --no-rc-file -A "tcp/$PORT" -a "$CLIENT_IP" -D "$SERVER_IP" \
    --key-base64-rijndael "$KEY" --key-base64-hmac "$HMAC" --use-hmac
sleep 0.2
say "After the knock"
if probe; then echo "open"; else echo "still closed (unexpected)"; cat "$WORK/posternd.log"; exit 1; fi
ip netns exec "$SERVER" "$BIN/posternd" -c "$WORK/postern.toml" --fw-list 2>/dev/null | sed 's/^/    /'

say "Waiting $TIMEOUT s: the grant is a set element with a kernel timeout"
sleep $((TIMEOUT + 1))
if probe; then echo "still open (unexpected)"; exit 1; else echo "closed again"; fi
say "posternd's log"
sed 's/^/    /' "$WORK/posternd.log"
