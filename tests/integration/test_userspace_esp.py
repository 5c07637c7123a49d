"""hostA — gwA — gwB — hostB through two userspace ESP data paths in network namespaces.

Checks real outcomes: traffic arrives, the wire carries only ESP with our SPIs that scapy
(an implementation we did not write) decrypts with the provisioned keys, forged, replayed
and malformed packets are dropped and counted, and lifetimes produce soft then hard events.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nsf_agent.userspace import lab as L
from nsf_agent.userspace.client import DatapathClient, spawn
from nsf_agent.userspace.model import Direction, Lifetime, Mode, SaConfig, UdpEncap

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: network namespaces, TUN devices and raw sockets"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun"),
]

ETH_P_ALL = 0x0003


@dataclass
class Tunnel:
    lab: L.Lab
    keys: L.TunnelKeys
    a: DatapathClient
    b: DatapathClient
    pa: object
    pb: object
    cap: socket.socket
    logs: list[Path]
    big: bool


# "big": TCP super-packets travel whole as one IP-fragmented ESP packet (the default);
# "segmented": every MSS segment is its own ESP packet (--no-big-esp)
@pytest.fixture(scope="module", params=["big", "segmented"])
def tunnel(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Tunnel]:
    big = request.param == "big"
    lab = L.Lab(L.unique_prefix("i2u"))
    tmp = tmp_path_factory.mktemp("esp")
    clients: list[DatapathClient] = []
    cap = None
    try:
        lab.build()
        keys = L.TunnelKeys.random(0x1001, 0x2002)
        procs = []
        logs = []
        for side, ns in (("a", lab.gw_a), ("b", lab.gw_b)):
            sock = str(tmp / f"{side}.sock")
            log = tmp / f"{side}.log"
            p = spawn(sock, tun="i2u0", netns=ns, log_path=str(log),
                      extra=["--acquire-interval", "5", "--big-esp" if big else "--no-big-esp"])
            lab.procs.append(p)
            procs.append(p)
            logs.append(log)
            c = DatapathClient(sock)
            clients.append(c)
            c.replace(*L.gateway_config(side, keys))
        # capture on the gw-gw link from the start (both directions)
        cap = lab.socket_in(lab.gw_a, socket.AF_PACKET, socket.SOCK_RAW,
                            socket.htons(ETH_P_ALL))
        cap.bind((lab.gw_link_a, 0))
        cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        cap.setblocking(False)
        yield Tunnel(lab, keys, clients[0], clients[1], procs[0], procs[1], cap, logs, big)
    finally:
        for c in clients:
            c.close()
        if cap is not None:
            cap.close()
        lab.destroy()


def ping(t: Tunnel, count: int = 3, size: int = 56, interval: str = "0.05") -> bool:
    r = t.lab.run(t.lab.host_a, ["ping", "-n", "-c", str(count), "-i", interval, "-s",
                                 str(size), "-W", "2", L.HOST_B], timeout=60)
    return r.returncode == 0 and f"{count} received" in r.stdout


def drain_capture(t: Tunnel) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(t.cap.recv(65536))
        except BlockingIOError:
            return frames


def counters(c: DatapathClient) -> dict[str, int]:
    return c.stats()["global"]


SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.create_connection((sys.argv[2], 5001), timeout=30)
s.sendall(data); s.close()
"""


def transfer(t: Tunnel, tmp_path: Path, size: int) -> None:
    """TCP hostA -> hostB through the tunnel; the receiver's sha256 must match."""
    data = os.urandom(size)
    f = tmp_path / "payload"
    f.write_bytes(data)
    srv = t.lab.popen(t.lab.host_b, [sys.executable, "-c", SERVER], stdout=-1, text=True)
    assert srv.stdout is not None
    assert srv.stdout.readline().strip() == "ready"
    r = t.lab.run(t.lab.host_a, [sys.executable, "-c", CLIENT, str(f), L.HOST_B], timeout=60)
    assert r.returncode == 0, r.stderr
    out, _ = srv.communicate(timeout=30)
    n, digest = out.split()
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()


def test_ping_and_tcp_transfer(tunnel: Tunnel, tmp_path: Path) -> None:
    t = tunnel
    assert ping(t), "ping hostA -> hostB through the tunnel failed"
    transfer(t, tmp_path, 3 << 20)
    snap_a = t.a.stats()  # one snapshot: the SA's counters and esp_tx read together
    sa_a = {s["sa"]: s for s in snap_a["sas"]}
    sa_b = {s["sa"]: s for s in t.b.stats()["sas"]}
    assert sa_a["t-ab"]["packets"] > 2000  # the bytes really went through our SA
    assert sa_a["t-ab"]["bytes"] > 3 << 20
    # both ends count the segments a whole super-packet carries, not ESP packets
    assert abs(sa_b["t-ab"]["packets"] - sa_a["t-ab"]["packets"]) < 0.05 * sa_a["t-ab"]["packets"]
    esp_tx = snap_a["global"]["esp_tx"]
    if t.big:
        assert esp_tx < sa_a["t-ab"]["packets"] / 4  # many segments per ESP packet
        assert sa_a["t-ab"]["seq"] == esp_tx  # one sequence number per ESP packet


def test_wire_carries_only_esp_that_scapy_decrypts(tunnel: Tunnel) -> None:
    from scapy.layers.inet import IP, defragment
    from scapy.layers.ipsec import ESP, SecurityAssociation

    t = tunnel
    assert ping(t, count=5)
    frames = drain_capture(t)
    k = t.keys
    sas = {
        k.spi_ab: SecurityAssociation(ESP, spi=k.spi_ab, crypt_algo="AES-GCM",
                                      crypt_key=k.key_ab,
                                      tunnel_header=IP(src=L.GW_A, dst=L.GW_B)),
        k.spi_ba: SecurityAssociation(ESP, spi=k.spi_ba, crypt_algo="AES-GCM",
                                      crypt_key=k.key_ba,
                                      tunnel_header=IP(src=L.GW_B, dst=L.GW_A)),
    }
    ip_frames = [f for f in frames if f[12:14] == b"\x08\x00"]
    others = {f[12:14].hex() for f in frames if f[12:14] not in (b"\x08\x00", b"\x08\x06")}
    assert not others, f"non-IPv4/ARP frames on the gateway link: {others}"
    assert len(ip_frames) > 1000  # the TCP transfer and pings of the previous test
    pkts = [IP(f[14:]) for f in ip_frames]
    fragments = [p for p in pkts if p.flags.MF or p.frag]
    if t.big:
        # whole super-packets: the outer IPv4 packets are fragmented (DF clear); reassemble
        # them as any receiver would before ESP processing (RFC 4303 3.4.1)
        assert fragments, "big ESP mode but no fragmented ESP on the wire"
        assert all(not p.flags.DF for p in fragments)
        pkts = [p for p in pkts if not (p.flags.MF or p.frag)] + \
            [IP(bytes(p)) for p in defragment(fragments)]
        assert not [p for p in pkts if p.flags.MF or p.frag], "fragments left unassembled"
        assert max(len(p) for p in pkts) > 30_000  # whole super-packets did travel
    else:
        assert not fragments
    seen = set()
    inner_nets = (L.NET_A, L.NET_B)
    for pkt in pkts:
        assert pkt.proto == 50, f"non-ESP IPv4 packet on the gateway link: {pkt.summary()}"
        spi = pkt[ESP].spi
        assert spi in sas, f"unexpected SPI {spi:#x}"
        seen.add(spi)
        inner = sas[spi].decrypt(pkt)  # raises on ICV mismatch
        assert any(ipaddress.ip_address(inner.src) in n for n in inner_nets)
        assert any(ipaddress.ip_address(inner.dst) in n for n in inner_nets)
    assert seen == set(sas)


def _send_raw(t: Tunnel, payload: bytes, proto: int = 50) -> None:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                      socket.inet_aton(L.GW_A), socket.inet_aton(L.GW_B))
    with t.lab.socket_in(t.lab.gw_a, socket.AF_INET, socket.SOCK_RAW,
                         socket.IPPROTO_RAW) as s:
        s.sendto(hdr + payload, (L.GW_B, 0))


def test_forged_replayed_and_malformed_packets_are_dropped(tunnel: Tunnel) -> None:
    t = tunnel
    drain_capture(t)
    assert ping(t, count=2)
    esp_ab = [f[14 + 20:] for f in drain_capture(t)
              if f[12:14] == b"\x08\x00" and f[14 + 9] == 50 and f[14 + 16:14 + 20] ==
              socket.inet_aton(L.GW_B)]
    assert esp_ab
    before = counters(t.b)
    captured = esp_ab[-1]
    # replay: the very packet gwB already accepted
    _send_raw(t, captured)
    # forgery: a future sequence number (passes the window) with the original ICV
    forged = bytearray(captured)
    forged[4:8] = (0x7FFFFFF0).to_bytes(4, "big")
    _send_raw(t, bytes(forged))
    # forgery: flipped ciphertext byte at a future sequence number
    flipped = bytearray(forged)
    flipped[-20] ^= 0xFF
    flipped[4:8] = (0x7FFFFFF1).to_bytes(4, "big")
    _send_raw(t, bytes(flipped))
    # unknown SPI, truncated ESP, garbage
    _send_raw(t, struct.pack("!II", 0xDEAD0000, 1) + os.urandom(48))
    _send_raw(t, b"\x00\x00\x10")
    _send_raw(t, b"")
    _send_raw(t, k_known_spi_garbage(t))

    def settled() -> dict[str, int] | None:
        now = counters(t.b)
        ok = (now["replay"] - before["replay"] >= 1
              and now["integrity_failed"] - before["integrity_failed"] >= 3
              and now["unknown_spi"] - before["unknown_spi"] >= 1
              and now["malformed"] - before["malformed"] >= 2)
        return now if ok else None

    now = L.wait_until(settled, 10, "drop counters on gwB")
    assert now["replay"] - before["replay"] == 1
    assert now["integrity_failed"] - before["integrity_failed"] == 3
    assert now["tun_tx"] == before["tun_tx"]  # nothing forged reached hostB's side
    sa = {s["sa"]: s for s in t.b.stats()["sas"]}
    assert sa["t-ab"]["replay_top"] < 0x7FFFFFF0  # forgeries never moved the window
    assert t.pb.poll() is None  # type: ignore[attr-defined]
    assert ping(t, count=2), "tunnel broken after hostile input"


def k_known_spi_garbage(t: Tunnel) -> bytes:
    """A known SPI with random bytes after it: must fail integrity, not crash."""
    return struct.pack("!II", t.keys.spi_ab, 0x7FFFFFF2) + os.urandom(61)


def test_soft_then_hard_byte_lifetime(tunnel: Tunnel) -> None:
    """A newer outbound SA with small byte limits takes over (same reqid), expires softly,
    then hard-expires and is removed; traffic falls back to the older SA throughout."""
    t = tunnel
    sas_a, _ = L.gateway_config("a", t.keys)
    old = next(s for s in sas_a if s.direction is Direction.OUTBOUND)
    key = os.urandom(20)
    common = dict(spi=0x3003, src=old.src, dst=old.dst, mode=Mode.TUNNEL,
                  enc_alg=old.enc_alg, enc_key=key, reqid=old.reqid)
    t.b.add_sa(SaConfig(name="lt-in", direction=Direction.INBOUND, **common))  # type: ignore[arg-type]
    t.a.add_sa(SaConfig(name="lt-out", direction=Direction.OUTBOUND,  # type: ignore[arg-type]
                        soft=Lifetime(bytes=20_000), hard=Lifetime(bytes=40_000), **common))
    t.a.events()  # discard anything earlier
    assert ping(t, count=60, size=1000, interval="0.01")
    soft = t.a.wait_event(lambda e: e["event"] == "expire" and e["sa"] == "lt-out", 10)
    assert soft["hard"] is False and soft["trigger"] == "bytes" and soft["spi"] == 0x3003
    hard = t.a.wait_event(lambda e: e["event"] == "expire" and e["sa"] == "lt-out", 10)
    assert hard["hard"] is True and hard["trigger"] == "bytes"
    names = {s["sa"] for s in t.a.stats()["sas"]}
    assert "lt-out" not in names and "t-ab" in names
    in_b = {s["sa"]: s for s in t.b.stats()["sas"]}
    assert 20 <= in_b["lt-in"]["packets"] <= 40  # the new SA carried traffic until removed


def test_udp_encapsulated_tunnel(tunnel: Tunnel, tmp_path: Path) -> None:
    """Full replacement to an RFC 3948 UDP-encapsulated SA pair; the wire shows UDP 4500."""
    from scapy.layers.inet import IP, UDP, defragment
    from scapy.layers.ipsec import ESP, SecurityAssociation

    t = tunnel
    keys = L.TunnelKeys.random(0x4004, 0x5005)
    t.keys = keys
    for side, c in (("a", t.a), ("b", t.b)):
        c.replace(*L.gateway_config(side, keys, encap=UdpEncap(4500, 4500)))
    drain_capture(t)
    assert ping(t, count=3)
    transfer(t, tmp_path, 1 << 20)
    udp = [IP(f[14:]) for f in drain_capture(t) if f[12:14] == b"\x08\x00"]
    fragments = [p for p in udp if p.flags.MF or p.frag]
    assert bool(fragments) == t.big
    udp = [p for p in udp if not (p.flags.MF or p.frag)] + \
        [IP(bytes(p)) for p in defragment(fragments)]
    assert udp and all(p.proto == 17 and p[UDP].dport == 4500 for p in udp)
    sa = SecurityAssociation(ESP, spi=keys.spi_ab, crypt_algo="AES-GCM", crypt_key=keys.key_ab,
                             tunnel_header=IP(src=L.GW_A, dst=L.GW_B),
                             nat_t_header=UDP(sport=4500, dport=4500))
    ab = [p for p in udp if p.dst == L.GW_B]
    assert ab and all(sa.decrypt(p)[IP].dst == L.HOST_B for p in ab)


def test_acquire_when_no_sa(tunnel: Tunnel) -> None:
    t = tunnel
    t.a.del_sa("t-ab")
    t.a.events()
    assert not ping(t, count=5, interval="0.05")
    ev = t.a.wait_event(lambda e: e["event"] == "acquire", 10)
    assert ev["reqid"] == 1 and ev["src"] == L.HOST_A and ev["dst"] == L.HOST_B
    assert not [e for e in t.a.events() if e["event"] == "acquire"]  # rate-limited
    assert counters(t.a)["no_sa"] >= 5
