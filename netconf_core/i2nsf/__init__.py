"""The I2NSF vocabulary the NSF agent and the controller must agree on.

Both sides import it from here and neither imports the other (agent ← shared → controller):

* `namespaces` — the YANG namespaces of the southbound modules (RFC 9061's ietf-i2nsf-ikeless
  and ietf-i2nsf-ike, our i2nsf-ike-events and i2nsf-sadb).
* `types` — address, prefix and port-range types of traffic selectors.
* `algorithms` — RFC 9061 / IANA IKEv2 encryption and integrity transforms with the key,
  salt, IV and ICV sizes of an IKE-less SA (what the controller generates keys for and what
  the agent installs).
* `proposals` — the same transform numbers and Diffie-Hellman groups as strongSwan proposal
  keywords (the IKE case: what a gateway's charon accepts is what a road warrior proposes).

It lives in `netconf_core` because that is the one package both sides already depend on; it
holds data and pure functions only (no I/O, no NETCONF server parts).
"""
