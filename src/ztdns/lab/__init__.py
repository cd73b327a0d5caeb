"""``ztdns lab``: a signed test internet on loopback, served by Knot DNS.

Owns: the lab topology and its cases (zones.py), the lab signer with NSEC/NSEC3 and chosen signature
times (sign.py), Knot DNS configs and processes (run.py), a slow authoritative server (slow.py), network
namespace helpers (netns.py) and the command (cli.py).
Config: none — command-line flags only. Metrics: none. Client data: none (synthetic zones).
"""
