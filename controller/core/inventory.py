"""The NSF inventory: how the controller reaches each NSF and what it knows of its data plane.

Every service (IPsec flow protection, SFC) works on these NSFs; the northbound module that
configures them is i2nsf-flow-policy (`NS`), whose `nsfs` list `controller.ipsec.model` parses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from netconf_core.i2nsf.types import IpAddr, IpNet

NS = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
MODULE = "i2nsf-flow-policy"


@dataclass(frozen=True)
class Nat:
    public_address: IpAddr
    public_port: int = 4500


@dataclass(frozen=True)
class NsfIke:
    """An NSF's IKE identity and operator-supplied credentials (IKE case)."""

    fqdn: str | None = None
    certificate_file: str | None = None
    private_key_file: str | None = None


@dataclass(frozen=True)
class Nsf:
    name: str
    address: str
    username: str
    host_key: str
    data_plane_address: IpAddr
    port: int = 830
    private_key_file: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)
    protected_prefixes: tuple[IpNet, ...] = ()
    nat: Nat | None = None
    dataplane: str = "kernel"
    # Not in to_dict: IKE settings must not change the IKE-less fingerprints.
    ike: NsfIke = NsfIke()

    @property
    def reachable_address(self) -> IpAddr:
        """The address peers send to: the NAT's public address when behind NAT."""
        return self.nat.public_address if self.nat else self.data_plane_address

    @property
    def reachable_port(self) -> int:
        """The UDP port peers send NAT-T ESP to."""
        return self.nat.public_port if self.nat else 4500

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the store; the inline password is deliberately left out."""
        return {
            "name": self.name, "address": self.address, "port": self.port,
            "username": self.username, "host_key": self.host_key,
            "private_key_file": self.private_key_file, "password_file": self.password_file,
            "data_plane_address": str(self.data_plane_address),
            "protected_prefixes": [str(p) for p in self.protected_prefixes],
            "nat": None if self.nat is None else {
                "public_address": str(self.nat.public_address),
                "public_port": self.nat.public_port},
            "dataplane": self.dataplane,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Nsf:
        nat = d.get("nat")
        return cls(
            name=d["name"], address=d["address"], port=int(d.get("port", 830)),
            username=d["username"], host_key=d["host_key"],
            private_key_file=d.get("private_key_file"), password_file=d.get("password_file"),
            data_plane_address=ipaddress.ip_address(d["data_plane_address"]),
            protected_prefixes=tuple(ipaddress.ip_network(p) for p in d["protected_prefixes"]),
            nat=None if nat is None else Nat(ipaddress.ip_address(nat["public_address"]),
                                             int(nat["public_port"])),
            dataplane=d.get("dataplane", "kernel"),
        )


def nsf_without_secret(n: Nsf) -> Nsf:
    """A copy safe to log or store."""
    return replace(n, password=None)
