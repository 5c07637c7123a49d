"""What the SFC data path needs from its network namespace: sysctls, interface MACs, local
addresses (netlink and /proc/net, which follow the namespace; /sys does not after setns),
sockaddr buffers for sendmmsg, and the IPv4 routing step for packets it re-injects."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct


def _bufsize(sock: socket.socket, opt: int, force: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _read_sysctl(key: str) -> str | None:
    try:
        with open(_sysctl_path(key)) as f:
            return f.read().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    with open(_sysctl_path(key), "w") as f:
        f.write(value)


def interfaces() -> dict[str, bytes]:
    """Interface name → MAC of this namespace."""
    from pyroute2 import IPRoute

    out = {}
    with IPRoute() as ipr:   # netlink, so that it is this namespace's (not /sys's) view
        for link in ipr.get_links():
            mac = link.get_attr("IFLA_ADDRESS") or ""
            out[link.get_attr("IFLA_IFNAME")] = bytes.fromhex(mac.replace(":", "")) \
                if mac else b"\0" * 6
    return out


def local_addresses() -> set[str]:
    addrs: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/net/fib_trie") as f:
        lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if "/32 host LOCAL" in line and i > 0:
                addrs.add(lines[i - 1].split()[-1])
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            h = line.split()[0]
            addrs.add(str(ipaddress.IPv6Address(bytes.fromhex(h))))
    return addrs


def _route_hop(ip: bytes) -> bytes | None:
    """An IPv4 packet with its TTL decremented and its header checksum updated (RFC 1624),
    an IPv6 packet with its hop limit decremented, or None when it runs out (the packet is
    dropped, as a router would)."""
    if ip[0] >> 4 == 6:                       # IPv6: hop limit, no header checksum
        if ip[7] <= 1:
            return None
        b = bytearray(ip)
        b[7] -= 1
        return bytes(b)
    ttl = ip[8]
    if ttl <= 1:
        return None
    b = bytearray(ip)
    b[8] = ttl - 1
    c = ((b[10] << 8) | b[11]) + 0x0100       # one's complement: ~(~HC + ~m + m')
    c = (c & 0xFFFF) + (c >> 16)
    b[10], b[11] = c >> 8, c & 0xFF
    return bytes(b)


def _sockaddr(addr: str) -> ctypes.Array[ctypes.c_char]:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        raw = struct.pack("=HH4s8x", socket.AF_INET, 0, ip.packed)
    else:
        raw = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, ip.packed, 0)
    return ctypes.create_string_buffer(raw, len(raw))
