"""The `i2nsf-east-west` configuration as data, and its checks (what libyang cannot see)."""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass

from lxml import etree

from controller.ipsec.model import CryptoProfile, Limits, check_profile
from netconf_core.errors import RpcError
from netconf_core.i2nsf.types import IpNet

NS = "urn:i2nsf-sdn:yang:i2nsf-east-west"
Q = f"{{{NS}}}"
EW_PATH = "/i2nsf-east-west:east-west"


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    port: int
    username: str
    private_key_file: str
    host_key: str
    local_account: str


@dataclass(frozen=True)
class Algorithms:
    encryption: int = 20
    key_length: int = 128
    integrity: int = 0
    rekey_time: int = 0  # seconds; 0: only on request

    def profile(self) -> CryptoProfile:
        """The SAs' crypto profile. With a rekey time the SAs get a hard lifetime of twice
        that plus 30 s (a safety net: both controllers down for that long → the NSFs drop
        the SAs, as an IKE SA would expire); without one they have no limit."""
        hard = Limits(time=2 * self.rekey_time + 30) if self.rekey_time else Limits()
        return CryptoProfile(name="east-west", encryption=self.encryption,
                             key_length=self.key_length, integrity=self.integrity,
                             soft=Limits(), hard=hard)

    def describe(self) -> str:
        return (f"encryption {self.encryption}/{self.key_length} bits, "
                f"integrity {self.integrity}, rekey every {self.rekey_time or '-'} s")


@dataclass(frozen=True)
class EwPolicy:
    name: str
    local_nsf: str
    local_prefixes: tuple[IpNet, ...]  # empty: the NSF's protected prefixes
    remote_prefixes: tuple[IpNet, ...]
    peer: str | None
    algorithms: Algorithms

    @property
    def policy_id(self) -> int:
        """Stable id for reqids, in the upper half of the range the IPsec service's ids
        (1, 2, ... from the store) never reach, so reqids never collide on an NSF."""
        return (1 << 21) | (zlib.crc32(self.name.encode()) & 0xFFFFF)


@dataclass(frozen=True)
class EwConfig:
    controller_id: str | None = None
    peers: dict[str, Peer] | None = None
    policies: dict[str, EwPolicy] | None = None

    def peer_map(self) -> dict[str, Peer]:
        return self.peers or {}

    def policy_map(self) -> dict[str, EwPolicy]:
        return self.policies or {}


def _t(el: etree._Element, name: str, default: str = "") -> str:
    return (el.findtext(Q + name) or default).strip()


def _nets(el: etree._Element, name: str) -> tuple[IpNet, ...]:
    return tuple(ipaddress.ip_network(e.text.strip(), strict=False)
                 for e in el.iterfind(Q + name) if e.text)


def parse_algorithms(el: etree._Element) -> Algorithms:
    return Algorithms(int(_t(el, "encryption", "20")), int(_t(el, "key-length", "128")),
                      int(_t(el, "integrity", "0")), int(_t(el, "rekey-time", "0")))


def parse_config(root: etree._Element | None) -> EwConfig:
    ew = None if root is None else (root if root.tag == Q + "east-west"
                                    else root.find(Q + "east-west"))
    if ew is None:
        return EwConfig(None, {}, {})
    peers = {}
    for p in ew.iterfind(Q + "peer"):
        peer = Peer(_t(p, "name"), _t(p, "address"), int(_t(p, "port", "830")),
                    _t(p, "username"), _t(p, "private-key-file"), _t(p, "host-key"),
                    _t(p, "local-account"))
        peers[peer.name] = peer
    pols = {}
    for p in ew.iterfind(Q + "policy"):
        pol = EwPolicy(_t(p, "name"), _t(p, "local-nsf"), _nets(p, "local-prefix"),
                       _nets(p, "remote-prefix"), _t(p, "peer") or None, parse_algorithms(p))
        pols[pol.name] = pol
    return EwConfig(_t(ew, "controller-id") or None, peers, pols)


def check_config(cfg: EwConfig, nsfs: dict[str, object]) -> None:
    """Refuse what would never work, before anything changes."""
    for pol in cfg.policy_map().values():
        path = f"{EW_PATH}/policy[name='{pol.name}']"
        if cfg.controller_id is None:
            raise RpcError("application", "missing-element",
                           "east-west policies need a controller-id",
                           path=f"{EW_PATH}/controller-id",
                           info={"bad-element": "controller-id"})
        if pol.local_nsf not in nsfs:
            raise RpcError("application", "invalid-value",
                           f"policy {pol.name}: local-nsf {pol.local_nsf!r} is not in the "
                           "i2nsf-flow-policy NSF inventory", path=f"{path}/local-nsf",
                           info={"bad-element": "local-nsf"})
        problems = check_profile(pol.algorithms.profile())
        if problems:
            raise RpcError("application", "invalid-value",
                           f"policy {pol.name}: {'; '.join(problems)}", path=path,
                           info={"bad-element": "encryption"})
        for other in cfg.policy_map().values():
            if other.name < pol.name and other.policy_id == pol.policy_id:
                raise RpcError("application", "invalid-value",
                               f"policies {other.name} and {pol.name} hash to the same "
                               "reqid; rename one", path=path, info={"bad-element": "name"})
    for peer in cfg.peer_map().values():
        if peer.name == cfg.controller_id:
            raise RpcError("application", "invalid-value",
                           f"peer {peer.name!r} has this controller's own controller-id",
                           path=f"{EW_PATH}/peer[name='{peer.name}']",
                           info={"bad-element": "name"})
