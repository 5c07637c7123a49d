"""The NSF agent: a NETCONF server on each gateway or host that applies the controller's
configuration (RFC 9061 SPD/SAD/PAD, IKE settings, SFC tables) to the local data plane."""

from netconf_core import __version__

__all__ = ["__version__"]
