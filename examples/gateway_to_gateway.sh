#!/usr/bin/env bash
# Gateway-to-gateway IPsec, IKE-less (RFC 9061, case 2), managed by the I2NSF controller.
#
#   hostA ── gwA ════ESP════ gwB ── hostB       198.51.100.0/24  <->  203.0.113.0/24
#             │                │
#             └──── mgmt ──────┘                 controller ⇄ agents: NETCONF over SSH
#
# Two NSF agents (userspace ESP data plane) and the controller run in network namespaces;
# the policy is applied with the `i2nsf-controller` CLI. Everything is torn down at exit.
# Run as root: `make demo` (or `bash examples/gateway_to_gateway.sh` after `make setup`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
P=i2d$$                                   # unique prefix: parallel runs never collide
HA=$P-ha GA=$P-ga GB=$P-gb HB=$P-hb MG=$P-mg
WORK=$(mktemp -d /tmp/i2nsf-demo.XXXXXX)
export I2NSF_PASSWORD=demo-$RANDOM$RANDOM  # the controller's admin password for this run

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
ctl()  { ip netns exec "$MG" "$BIN/i2nsf-controller" --port 8300 --user admin "$@"; }
show() { printf '\033[36m   $ i2nsf-controller %s\033[0m\n' "$*"; ctl "$@"; }  # echo, then run
wait_for() {  # wait_for <what> <seconds> <command...>: poll with progress dots
    local what=$1 secs=$2; shift 2
    printf '   waiting for %s ' "$what"
    for _ in $(seq $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then echo " ok"; return 0; fi
        printf '.'; sleep 0.1
    done
    echo " timed out"; return 1
}

cleanup() {
    set +e
    bold "== tearing down"
    for ns in $MG $GA $GB $HA $HB; do   # every process we started lives in these namespaces
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    sleep 0.5
    for ns in $MG $GA $GB $HA $HB; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
    note "namespaces removed, processes stopped, $WORK deleted"
}

if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces, TUN, raw sockets)" >&2; exit 1; fi
[ -x "$BIN/i2nsf-controller" ] || { echo "run 'make setup' first" >&2; exit 1; }
trap cleanup EXIT

bold "== 1. topology: two sites, a host behind each gateway, a management network"
for ns in $HA $GA $GB $HB $MG; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip link add eth0 netns "$HA" type veth peer name lan netns "$GA"
ip link add gab netns "$GA" type veth peer name gba netns "$GB"       # the "internet"
ip link add lan netns "$GB" type veth peer name eth0 netns "$HB"
ip link add gwa netns "$MG" type veth peer name mgmt netns "$GA"
ip link add gwb netns "$MG" type veth peer name mgmt netns "$GB"
addr() { ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up; }
addr "$HA" eth0 198.51.100.10/24; addr "$GA" lan 198.51.100.1/24
addr "$GA" gab 192.0.2.1/24;      addr "$GB" gba 192.0.2.2/24
addr "$GB" lan 203.0.113.1/24;    addr "$HB" eth0 203.0.113.10/24
addr "$MG" gwa 10.254.1.1/30;     addr "$GA" mgmt 10.254.1.2/30
addr "$MG" gwb 10.254.2.1/30;     addr "$GB" mgmt 10.254.2.2/30
ip -n "$HA" route add default via 198.51.100.1
ip -n "$HB" route add default via 203.0.113.1
for gw in $GA $GB; do ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1; done
note "hostA 198.51.100.10 - gwA 192.0.2.1 === gwB 192.0.2.2 - hostB 203.0.113.10"
note "without a policy the gateways do not route the sites to each other:"
if ip netns exec "$HA" ping -c 1 -W 1 203.0.113.10 >/dev/null; then
    note "unexpected: hostB reachable"; else note "ping hostA -> hostB: no answer (as expected)"; fi

bold "== 2. keys: the controller's login key and each agent's host key (pinned)"
CTL_PUB=$("$BIN/i2nsf-controller" keygen "$WORK/controller_key")
mkdir -m 700 "$WORK/agent-a" "$WORK/agent-b" "$WORK/controller"
HK_A=$("$BIN/i2nsf-controller" keygen "$WORK/agent-a/ssh_host_ed25519_key")
HK_B=$("$BIN/i2nsf-controller" keygen "$WORK/agent-b/ssh_host_ed25519_key")
note "controller: ${CTL_PUB:0:40}...   gwA: ${HK_A:0:40}...   gwB: ${HK_B:0:40}..."

bold "== 3. start the NSF agents (userspace ESP) and the controller"
for side in a b; do
    ns=$GA; [ $side = b ] && ns=$GB
    mg=10.254.1.2; [ $side = b ] && mg=10.254.2.2
    cat > "$WORK/agent-$side.toml" <<EOF
[server]
host = "$mg"
port = 830
state_dir = "$WORK/agent-$side"

[dataplane]
appliers = ["userspace"]

[[users]]
name = "controller"
authorized_keys = ["$CTL_PUB"]
EOF
    ip netns exec "$ns" "$BIN/i2nsf-agent" run -c "$WORK/agent-$side.toml" \
        --ready-file "$WORK/agent-$side.ready" >"$WORK/agent-$side.log" 2>&1 &
done
HASH=$(printf '%s\n' "$I2NSF_PASSWORD" | "$BIN/i2nsf-agent" hash-password --stdin)
cat > "$WORK/controller.toml" <<EOF
[server]
host = "127.0.0.1"
port = 8300
state_dir = "$WORK/controller"

[controller]
rekey_grace = 1.0

[[users]]
name = "admin"
password_hash = "$HASH"
EOF
ip netns exec "$MG" "$BIN/i2nsf-controller" serve -c "$WORK/controller.toml" \
    --ready-file "$WORK/controller.ready" >"$WORK/controller.log" 2>&1 &
wait_for "agent gwA" 30 test -e "$WORK/agent-a.ready"
wait_for "agent gwB" 30 test -e "$WORK/agent-b.ready"
wait_for "controller" 30 test -e "$WORK/controller.ready"
# the CLI verifies the controller's host key before it sends the password
export I2NSF_CONTROLLER_HOST_KEY_FILE="$WORK/controller/ssh_host_ed25519_key.pub"

bold "== 4. register the two gateways with the controller"
for side in a b; do
    mg=10.254.1.2 dp=192.0.2.1 net=198.51.100.0/24 hk=$HK_A
    [ $side = b ] && mg=10.254.2.2 dp=192.0.2.2 net=203.0.113.0/24 hk=$HK_B
    printf '\033[36m   $ i2nsf-controller nsf add gw%s --address %s --username controller \\\n' $side $mg
    printf '       --private-key-file controller_key --host-key "%s..." \\\n' "${hk:0:32}"
    printf '       --data-plane-address %s --prefix %s --dataplane userspace\033[0m\n' $dp $net
    ctl nsf add gw$side --address $mg --username controller \
        --private-key-file "$WORK/controller_key" --host-key "$hk" \
        --data-plane-address $dp --prefix $net --dataplane userspace
done
wait_for "both NETCONF sessions" 20 bash -c "[ \$(ip netns exec $MG $BIN/i2nsf-controller \
    --port 8300 nsf list | grep -c ' connected') = 2 ]"
show nsf list

bold "== 5. one policy: protect site A <-> site B (AES-GCM-16/128, IKE-less)"
show policy apply site-a-to-b -a gwa -b gwb --profile demo
wait_for "the policy to be active on both gateways" 30 \
    bash -c "ip netns exec $MG $BIN/i2nsf-controller --port 8300 policy list | grep -q active"
show policy show site-a-to-b

bold "== 6. traffic flows through the tunnel"
ip netns exec "$HA" ping -c 3 -i 0.3 203.0.113.10

bold "== 7. the SAs on both gateways (SPIs and keys chosen by the controller)"
show sa list

bold "== 8. on the wire between the gateways: only ESP, with those SPIs"
ip netns exec "$HA" ping -c 8 -i 0.2 203.0.113.10 >/dev/null &
PING=$!
ip netns exec "$GA" timeout 10 tcpdump -l -nn -i gab -c 6 2>/dev/null | sed 's/^/   /'
wait $PING

bold "== 9. rekey: shorten the lifetimes (soft 4 s, hard 8 s) while ping keeps running"
note "make-before-break: new inbound SAs on both sides, switch outbound, remove old after 1 s"
show policy apply site-a-to-b -a gwa -b gwb --profile demo --soft-time 4 --hard-time 8
ip netns exec "$HA" ping -q -c 300 -i 0.05 203.0.113.10 >"$WORK/ping.txt" &
PING=$!
for i in 1 2 3 4 5; do
    sleep 3
    ctl policy list | awk -v t="$((i * 3))" 'NR > 2 { printf "   t=%2ss  %s generation %s (%s)\n", t, $1, $6, $5 }'
done
wait $PING || true
note "ping during the rekeys: $(grep -E 'packets transmitted' "$WORK/ping.txt")"
show sa list

bold "== 10. controller status"
show status
bold "done."
