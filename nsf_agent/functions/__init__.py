"""Security functions (firewall, anti-spoofing, DDoS mitigator via nftables; IDS/IPS/DPI via
NFQUEUE and a Hyperscan signature engine), each run as one process inside an SF instance's
network namespace by the DMS (nsf_agent.dms). See docs/security-functions.md."""
