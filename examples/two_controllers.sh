#!/usr/bin/env bash
# Gateway-to-gateway IPsec under two controllers (seed section 10.2, IKE-less case).
#
#   hostA ── gwA ════ESP════ gwB ── hostB       198.51.100.0/24  <->  203.0.113.0/24
#             │                │
#           ctl-a ⇄ ⇄ ⇄ ⇄ ⇄ ctl-b              each controller manages ONE gateway; they agree
#                                               on the SAs over NETCONF/SSH (i2nsf-east-west)
#
# Admin A configures ctl-a, admin B ctl-b (here: this script, with short ncclient snippets).
# Each controller allocates the SPIs inbound to its own gateway; the keys come from an X25519
# exchange between the controllers (HKDF per SA), so they never cross the east-west channel.
# Run as root after `make setup`: `bash examples/two_controllers.sh`. Torn down at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${I2NSF_BIN:-$ROOT/.venv/bin}     # I2NSF_BIN: another venv
P=i2w$$                                   # unique prefix: parallel runs never collide
HA=$P-ha GA=$P-ga GB=$P-gb HB=$P-hb MG=$P-mg
WORK=$(mktemp -d /tmp/i2nsf-ew.XXXXXX)
export I2NSF_PASSWORD=demo-$RANDOM$RANDOM  # the controller's admin password for this run

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
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

bold "== 2. keys: agents' host keys, controllers' host keys and logins (all pinned)"
mkdir -m 700 "$WORK/agent-a" "$WORK/agent-b" "$WORK/ctl-a" "$WORK/ctl-b"
for s in a b; do
    "$BIN/i2nsf-controller" keygen "$WORK/ctl-$s-to-agent" >"$WORK/ctl-$s-to-agent.pub.line"
    "$BIN/i2nsf-controller" keygen "$WORK/ctl-$s-to-peer" >"$WORK/ctl-$s-to-peer.pub.line"
    "$BIN/i2nsf-controller" keygen "$WORK/agent-$s/ssh_host_ed25519_key" >"$WORK/hk-agent-$s"
    "$BIN/i2nsf-controller" keygen "$WORK/ctl-$s/ssh_host_ed25519_key" >"$WORK/hk-ctl-$s"
done
note "ctl-a pins ctl-b's host key $(cut -c1-40 "$WORK/hk-ctl-b")... and vice versa"

bold "== 3. start the agents and the two controllers (ctl-a :8300, ctl-b :8301)"
HASH=$(printf '%s\n' "$I2NSF_PASSWORD" | "$BIN/i2nsf-agent" hash-password --stdin)
for s in a b; do
    o=b; [ $s = b ] && o=a
    ns=$GA mg=10.254.1.2 port=8300; [ $s = b ] && ns=$GB mg=10.254.2.2 port=8301
    cat > "$WORK/agent-$s.toml" <<EOF
[server]
host = "$mg"
port = 830
state_dir = "$WORK/agent-$s"

[dataplane]
appliers = ["userspace"]

[[users]]
name = "controller"
authorized_keys = ["$(cat "$WORK/ctl-$s-to-agent.pub.line")"]
EOF
    ip netns exec "$ns" "$BIN/i2nsf-agent" run -c "$WORK/agent-$s.toml" \
        --ready-file "$WORK/agent-$s.ready" >"$WORK/agent-$s.log" 2>&1 &
    # one account for the admin, one for the peer controller (its key only)
    cat > "$WORK/ctl-$s.toml" <<EOF
[server]
host = "127.0.0.1"
port = $port
state_dir = "$WORK/ctl-$s"

[[users]]
name = "admin"
password_hash = "$HASH"

[[users]]
name = "peer-$o"
authorized_keys = ["$(cat "$WORK/ctl-$o-to-peer.pub.line")"]
EOF
    ip netns exec "$MG" "$BIN/i2nsf-controller" serve -c "$WORK/ctl-$s.toml" \
        --ready-file "$WORK/ctl-$s.ready" >"$WORK/ctl-$s.log" 2>&1 &
done
for f in agent-a agent-b ctl-a ctl-b; do wait_for "$f" 30 test -e "$WORK/$f.ready"; done

# admin() <side> <python>: a short ncclient session as that side's admin
admin() {
    local port=8300; [ "$1" = b ] && port=8301
    ip netns exec "$MG" env PORT=$port HK="$WORK/ctl-$1/ssh_host_ed25519_key.pub" \
        "$BIN/python" -c "
import os, sys
from lxml import etree
from ncclient import manager
m = manager.connect(host='127.0.0.1', port=int(os.environ['PORT']), username='admin',
                    password=os.environ['I2NSF_PASSWORD'], hostkey_verify=False,
                    allow_agent=False, look_for_keys=False)
EW = 'urn:i2nsf-sdn:yang:i2nsf-east-west'
$2
m.close_session()"
}

bold "== 4. admin A: gwA, peer ctl-b, and a policy to 203.0.113.0/24 (peer discovered)"
bold "   admin B: gwB, peer ctl-a, and the matching policy to 198.51.100.0/24"
for s in a b; do
    o=b; [ $s = b ] && o=a
    mg=10.254.1.2 dp=192.0.2.1 net=198.51.100.0/24 rnet=203.0.113.0/24 oport=8301
    [ $s = b ] && mg=10.254.2.2 dp=192.0.2.2 net=203.0.113.0/24 rnet=198.51.100.0/24 oport=8300
    cat > "$WORK/config-$s.xml" <<EOF
<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
 <flow-protection xmlns="urn:i2nsf-sdn:yang:i2nsf-flow-policy"><nsfs><nsf>
  <name>gw$s</name>
  <management><address>$mg</address><port>830</port><username>controller</username>
   <private-key-file>$WORK/ctl-$s-to-agent</private-key-file>
   <host-key>$(cat "$WORK/hk-agent-$s")</host-key></management>
  <data-plane-address>$dp</data-plane-address><protected-prefix>$net</protected-prefix>
  <dataplane>userspace</dataplane></nsf></nsfs></flow-protection>
 <east-west xmlns="urn:i2nsf-sdn:yang:i2nsf-east-west">
  <controller-id>ctl-$s</controller-id>
  <peer><name>ctl-$o</name><address>127.0.0.1</address><port>$oport</port>
   <username>peer-$s</username><private-key-file>$WORK/ctl-$s-to-peer</private-key-file>
   <host-key>$(cat "$WORK/hk-ctl-$o")</host-key><local-account>peer-$o</local-account></peer>
  <policy><name>to-$o</name><local-nsf>gw$s</local-nsf><remote-prefix>$rnet</remote-prefix>
  </policy>
 </east-west>
</config>
EOF
    printf '\033[36m   ctl-%s: edit-config running <- %s\033[0m\n' $s "config-$s.xml"
    admin $s "m.edit_config(target='running', config=open('$WORK/config-$s.xml').read())"
done

status() {  # status <side>: the east-west policy's status on that controller
    admin "$1" "
st = etree.fromstring(m.get(filter=('subtree', f'<east-west-state xmlns=\"{EW}\"/>')).xml.encode())
for p in st.iter(f'{{{EW}}}policy'):
    print(p.findtext(f'{{{EW}}}status'))"
}
printf '   waiting for both controllers to agree '
for _ in $(seq 60); do   # each status check is one NETCONF session: ~0.5 s
    [ "$(status a)" = protected ] && [ "$(status b)" = protected ] && break
    printf '.'; sleep 0.2
done
echo
note "ctl-a: $(status a)   ctl-b: $(status b)"

bold "== 5. discovery: ctl-a, which controller manages 203.0.113.10?"
admin a "
r = m.dispatch(etree.fromstring(f'<lookup-prefix xmlns=\"{EW}\"><address>203.0.113.10</address></lookup-prefix>'))
x = etree.fromstring(r.xml.encode())
print('   ', *(x.findtext(f'{{{EW}}}{k}') for k in ('controller-id', 'nsf', 'prefix')))"

bold "== 6. traffic flows through the tunnel"
ip netns exec "$HA" ping -c 3 -i 0.3 203.0.113.10

bold "== 7. the agreement on each side (inbound SPIs chosen there; no keys were sent)"
for s in a b; do
    note "ctl-$s:"
    admin $s "
st = etree.fromstring(m.get(filter=('subtree', f'<east-west-state xmlns=\"{EW}\"/>')).xml.encode())
for p in st.iter(f'{{{EW}}}policy'):
    print('     ', p.findtext(f'{{{EW}}}name'), p.findtext(f'{{{EW}}}status'), 'peer',
          p.findtext(f'{{{EW}}}peer'), 'generation', p.findtext(f'{{{EW}}}generation'),
          'inbound', [hex(int(e.text)) for e in p.iter(f'{{{EW}}}inbound-spi')],
          'outbound', [hex(int(e.text)) for e in p.iter(f'{{{EW}}}outbound-spi')])"
done
bold "== 8. rekey, make-before-break across both controllers, under a 50/s ping"
note "new inbound SAs on both gateways, then each sender switches, then the old inbound go"
ip netns exec "$HA" ping -q -c 150 -i 0.02 203.0.113.10 >"$WORK/ping.txt" &
PING=$!
for _ in 1 2; do
    admin a "
r = m.dispatch(etree.fromstring(f'<rekey-policy xmlns=\"{EW}\"><policy>to-b</policy></rekey-policy>'))
print('    rekey-policy to-b -> generation', etree.fromstring(r.xml.encode()).findtext(f'{{{EW}}}generation'))"
    sleep 1
done
wait $PING || true
note "ping during the rekeys: $(grep -E 'packets transmitted' "$WORK/ping.txt")"
note "ctl-a: $(status a)   ctl-b: $(status b)"

bold "done."
