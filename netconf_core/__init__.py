"""Code shared by the NSF agent and the controller: YANG context loading and the NETCONF
server core (SSH transport, framing, sessions, datastores, edit-config, notifications)."""

__version__ = "0.1.0"
