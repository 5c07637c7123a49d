"""IPsec flow protection (RFC 9061): policies between NSFs → SPD/SAD entries (IKE-less case)
or IKE configuration (IKE case) on the NSFs, with key management and rekeying.

* `model` (northbound config), `checks` (what libyang cannot check), `translate`
  (policy → ietf-i2nsf-ikeless entries), `keys` (SPIs, key material), `ledger` (SAs stored
  before they are pushed; operational state), `rekey` (per-policy timers, make-before-break).
* `service` — `FlowService`, split by job: `config_diff`, `scheduling`, `batching`, `events`.
* The IKE case: `ike_config` (ietf-i2nsf-ike entries), `ike_manager` (push, IKE events),
  `ike_bundle` (road warrior swanctl bundle), `ca` (the controller's CA).

Depends on `controller.core` and the shared vocabulary `netconf_core.i2nsf`, never on
the agent's package or `controller.sfc`.
"""
