"""Service function chaining (SFC-enabled I2NSF, seed 003): the controller's two SFC managers.

* **Policy Manager** — turns SFC policies (i2nsf-sfc-policy: which traffic goes through which
  chain of security functions) into classifier and SFF tables (NSH service path id and index,
  next hops) pushed to the NSFs over NETCONF, and answers table misses and loop reports.
* **Catalog Manager** — the registry of security-function instances (their capabilities and
  locators), registered by the Developer's Management System (i2nsf-dms); the Policy Manager
  picks instances from it to build rendered service paths.

Empty so far (issue 15 made the home; the SFC issues fill it). Like `controller.ipsec` it
builds on `controller.core` (inventory, store, sessions, transactions, `Engine`) and never
imports `controller.ipsec` or the agent's package.
"""
