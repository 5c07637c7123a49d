"""Address, prefix and port-range types of RFC 9061 traffic selectors."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int
