"""IKE case (RFC 9061): the ietf-i2nsf-ike tree → strongSwan charon over vici.

`translate` turns committed configuration into vici messages (pure, testable without a
daemon); `charon` starts and supervises a charon of our own (or attaches to one) and wraps
the vici session; `nsf_agent.appliers.ike` runs commits through both as transactions.
"""
