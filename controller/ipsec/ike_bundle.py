"""A road warrior's bundle (host-to-gateway, IKE case): swanctl.conf, certificate, key, CA.

The proposals are made by the same translation the gateway's agent uses
(`netconf_core.i2nsf.proposals`), so the host proposes exactly what the gateway accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.ipsec.ca import write_private
from controller.ipsec.ike_config import Q, Spd, conn_entry, host_net, identity
from controller.ipsec.model import CryptoProfile, Nsf, RoadWarrior
from netconf_core.i2nsf.proposals import esp_proposals, ike_proposals


@dataclass(frozen=True)
class _HostOptions:
    libipsec: bool = True  # a host's charon may run kernel-libipsec: propose no ESN


_ROAD_WARRIOR = _HostOptions()


# ---- road warrior bundle ------------------------------------------------------------------------


def _proposals(prof: CryptoProfile) -> tuple[str, str]:
    """strongSwan proposal strings, made by the agent's own translation so that the host
    proposes exactly what the gateway accepts."""
    ent = conn_entry("x", autostartup="add", local_pad="l", remote_pad="r", prof=prof,
                     soft=prof.soft, hard=prof.hard,
                     spds=[Spd("s", "0.0.0.0/0", "0.0.0.0/0", tunnel=("0.0.0.0", "0.0.0.0"))])
    ike = ike_proposals(ent, "", "road warrior")
    sa = ent.find(f"{Q}spd/{Q}spd-entry/{Q}ipsec-policy-config/{Q}processing-info/"
                  f"{Q}ipsec-sa-cfg")
    assert sa is not None
    groups = [prof.ike.pfs_group] if prof.ike.pfs_group else []
    esp = esp_proposals(sa, groups, "", "road warrior", _ROAD_WARRIOR)
    return ",".join(ike), ",".join(esp)


def swanctl_conf(rw: RoadWarrior, gw: Nsf, prof: CryptoProfile) -> str:
    ike, esp = _proposals(prof)
    remote_ts = ",".join(str(p) for p in (rw.prefixes or gw.protected_prefixes))
    soft, hard = prof.soft, prof.hard
    life = []
    if soft.time:
        life.append(f"        rekey_time = {soft.time}s")
    if hard.time:
        life.append(f"        life_time = {hard.time}s")
    lines = "\n".join(life)
    if rw.pool is not None:
        # ask the gateway for an address of its pool; charon installs it (with
        # kernel-libipsec on the TUN device) and narrows the selector to it
        inner_note = f"# The gateway hands out an address of {rw.pool} (virtual IP)."
        vips = "\n        vips = " + ("0.0.0.0" if rw.pool.version == 4 else "::")
        local_ts = "dynamic"
    else:
        inner_note = (f"# Inner address {rw.inner_address} must be configured on the host "
                      "(e.g. on lo).")
        vips = ""
        local_ts = host_net(rw.inner_address)
    return f"""# i2nsf road warrior {rw.name}: connects to gateway {gw.name}
# Credentials: x509/host.pem, private/host.pem, x509ca/ca.pem (next to this file).
{inner_note}
connections {{
    i2nsf-{rw.name} {{
        version = 2
        remote_addrs = {gw.reachable_address}{vips}
        proposals = {ike}
        send_cert = always
        encap = {"yes" if gw.nat else "no"}
        dpd_delay = 30s
        local {{
            auth = pubkey
            certs = host.pem
            id = {rw.identity}
        }}
        remote {{
            auth = pubkey
            id = {identity(gw)}
        }}
        children {{
            i2nsf {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                mode = tunnel
                esp_proposals = {esp}
{lines}
                start_action = start
                dpd_action = restart
            }}
        }}
    }}
}}
"""


def write_bundle(bundle: dict[str, str], out: Path) -> list[Path]:
    """Lay a bundle out as swanctl expects it (`swanctl --load-all` with SWANCTL_DIR=out)."""
    files = {
        out / "swanctl.conf": bundle["swanctl-conf"],
        out / "x509" / "host.pem": bundle["certificate"],
        out / "private" / "host.pem": bundle["private-key"],
        out / "x509ca" / "ca.pem": bundle["ca-certificate"],
    }
    for path, text in files.items():
        write_private(path, text.encode())
    return list(files)
