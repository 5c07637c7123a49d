"""What every controller service builds on: the NSF inventory, the store, southbound NETCONF
sessions (one per NSF, with a notification subscription), all-or-nothing transactions over
them, and the engine plumbing (loop, session pool, transactions journal).

Nothing here knows a service: `core` never imports `controller.ipsec` or `controller.sfc`
(tests/test_controller_layout.py checks it).

* `inventory` — NSFs (address, credentials, host key, data-plane address, NAT).
* `records`, `store` — what the controller keeps (SQLite by default, behind `Store`).
* `nc_client` — the asyncio NETCONF client; `southbound` — one reconnecting session per NSF.
* `transaction` — candidate edit, validate, confirmed commit, confirm on every NSF, or none.
* `engine` — `Engine`, the base of every service: wake-ups, session pool, transactions.
"""
