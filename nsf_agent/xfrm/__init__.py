"""Linux XFRM (IPsec SPD/SAD) over NETLINK_XFRM, on pyroute2's netlink framework.

``netlink`` holds the protocol (constants, structure codecs, pyroute2 message
classes), ``nlsocket`` the namespace-aware socket with batching, ``model`` the
dataclasses, ``api`` the SPD/SAD operations and ``events`` the multicast listener.
See docs/xfrm.md.
"""

from .api import Batch, Xfrm, explain, first_error, probe_esp
from .events import (
    AcquireEvent,
    ExpireEvent,
    PolicyEvent,
    PolicyExpireEvent,
    ReportEvent,
    SaEvent,
    XfrmListener,
)
from .model import (
    Action,
    AeadAlgorithm,
    Algorithm,
    Algorithms,
    AuthAlgorithm,
    Dir,
    Encap,
    Lifetime,
    LifetimeCurrent,
    Mark,
    Mode,
    Policy,
    PolicyType,
    Proto,
    ReplayEsn,
    Selector,
    State,
    Template,
)
from .nlsocket import XfrmBatchError, XfrmError, XfrmSocket, XfrmUnsupportedError

__all__ = [
    "AcquireEvent",
    "Action",
    "AeadAlgorithm",
    "Algorithm",
    "Algorithms",
    "AuthAlgorithm",
    "Batch",
    "Dir",
    "Encap",
    "ExpireEvent",
    "Lifetime",
    "LifetimeCurrent",
    "Mark",
    "Mode",
    "Policy",
    "PolicyEvent",
    "PolicyExpireEvent",
    "PolicyType",
    "Proto",
    "ReplayEsn",
    "ReportEvent",
    "SaEvent",
    "Selector",
    "State",
    "Template",
    "Xfrm",
    "XfrmBatchError",
    "XfrmError",
    "XfrmListener",
    "XfrmSocket",
    "XfrmUnsupportedError",
    "explain",
    "first_error",
    "probe_esp",
]
