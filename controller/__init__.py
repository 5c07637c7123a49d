"""The I2NSF security controller: turns flow-protection and SFC policies into NSF
configuration and keeps it alive (keys, rekeys, events)."""

from netconf_core import __version__

__all__ = ["__version__"]
