"""The kernel side of an SF instance (docs/sfc.md): its network namespace, the two veth pairs
to the host namespace (sf-in / sf-out inside, names given by the DMS outside) and the routed
bump-in-the-wire set-up inside (forwarding on, rp_filter off, default routes out of sf-out via
link-local next hops 169.254.1.1 / fe80::1 that are permanent neighbours = the MAC of the
host-side peer of sf-out). Everything is done with iproute2, and `destroy` removes whatever
of it exists (idempotent: used for rollback, removal and reconciliation)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass

SF_IN, SF_OUT = "sf-in", "sf-out"
NEXT_HOP4, NEXT_HOP6 = "169.254.1.1", "fe80::1"
SF_OUT_ADDR = "169.254.1.2/30"
NETNS_DIR = "/run/netns"


class PlumbingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Links:
    sf_mac: str  # sf-in (where the proxy sends)
    host_mac: str  # host-side peer of sf-out (the instance's next hop)


def _ip(args: list[str], netns: str | None = None, batch: str | None = None) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    r = subprocess.run(cmd, input=batch, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        shown = " ".join(cmd) + (f" <<{batch!r}" if batch else "")
        raise PlumbingError(f"{shown}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def link_exists(name: str, netns: str | None = None) -> bool:
    r = subprocess.run(["ip", *(["-n", netns] if netns else []), "link", "show", "dev", name],
                       capture_output=True, check=False)
    return r.returncode == 0


def mac_of(name: str, netns: str | None = None) -> str:
    info = json.loads(_ip(["-j", "link", "show", "dev", name], netns))
    return str(info[0]["address"])


def create(ns: str, to_sf: str, from_sf: str, host_ns: str | None = None) -> Links:
    """Create the namespace and links; on failure whatever was made is left for the caller's
    `destroy` (the DMS journals before it calls this)."""
    _ip(["netns", "add", ns])
    sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.forwarding=1",
               "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
               "net.ipv6.conf.default.accept_ra=0"]
    r = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *sysctls],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise PlumbingError(f"sysctl in {ns}: {r.stderr.strip()}")
    _ip(["link", "add", to_sf, "type", "veth", "peer", "name", SF_IN, "netns", ns], host_ns)
    _ip(["link", "add", from_sf, "type", "veth", "peer", "name", SF_OUT, "netns", ns], host_ns)
    _ip(["-batch", "-"], host_ns, f"link set {to_sf} up\nlink set {from_sf} up\n")
    host_mac = mac_of(from_sf, host_ns)
    _ip(["-batch", "-"], ns, "\n".join([
        "link set lo up", f"link set {SF_IN} up", f"link set {SF_OUT} up",
        f"addr add {SF_OUT_ADDR} dev {SF_OUT}",
        f"route add default via {NEXT_HOP4} dev {SF_OUT} onlink",
        f"neigh replace {NEXT_HOP4} lladdr {host_mac} dev {SF_OUT} nud permanent",
        f"route add default via {NEXT_HOP6} dev {SF_OUT}",
        f"neigh replace {NEXT_HOP6} lladdr {host_mac} dev {SF_OUT} nud permanent",
    ]) + "\n")
    return Links(mac_of(SF_IN, ns), host_mac)


def pids_in(ns: str) -> list[int]:
    if not netns_exists(ns):
        return []
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                       check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def kill_all(ns: str, sig: int = signal.SIGKILL) -> None:
    for pid in pids_in(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def destroy(ns: str, to_sf: str | None, from_sf: str | None, host_ns: str | None = None
            ) -> None:
    """Remove everything of an instance that exists: processes in its namespace, the host
    side links (their sf-in/sf-out peers go with them) and the namespace."""
    kill_all(ns)
    for name in (to_sf, from_sf):
        if name and (host_ns is None or netns_exists(host_ns)) and link_exists(name, host_ns):
            _ip(["link", "del", "dev", name], host_ns)
    if netns_exists(ns):
        _ip(["netns", "del", ns])
