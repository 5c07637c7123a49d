"""RESTCONF (RFC 8040) over the NETCONF server core: same datastores, validation and access
rules (see `server`)."""

from netconf_core.restconf.monitoring import RestconfStateApplier
from netconf_core.restconf.server import RestconfConfig, RestconfServer

__all__ = ["RestconfConfig", "RestconfServer", "RestconfStateApplier"]
