"""YANG namespaces of the modules the agent serves and the controller writes to."""

IKELESS_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"  # RFC 9061, IKE-less case
IKE_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ike"  # RFC 9061, IKE case
IKE_EVENTS_NS = "urn:i2nsf-sdn:yang:i2nsf-ike-events"  # IKE/child SA events, our augments
SADB_NS = "urn:i2nsf-sdn:yang:i2nsf-sadb"  # SAD/SPD operational RPCs and notifications
FENCE_NS = "urn:i2nsf-sdn:yang:i2nsf-controller-fence"  # HA fencing epoch on every edit
