"""Userspace ESP backend: RFC 4303 ESP over a TUN device for kernels without ESP.

`model` holds the typed SPD/SAD input, `esp` the per-packet cryptography, `datapath` the
separate process that moves packets, and `client` the agent's side of its control channel.
"""
