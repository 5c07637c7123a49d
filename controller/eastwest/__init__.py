"""East-west interface between security controllers (seed section 10.2, IKE-less case).

Two controllers, each managing one NSF, agree on the SAs between their NSFs over NETCONF
(module `i2nsf-east-west`); each pushes only its own NSF. Imports go one way: this package
uses `controller.core` and `controller.ipsec`, which know nothing of it except the wiring
hook in `controller.server`.
"""
