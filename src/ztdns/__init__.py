"""ztdns: Zero Trust DNS — a protective resolver that answers only what each client's policy allows.

Capabilities live one per sub-package (``policy/``, ``cache/``, ``resolver/``, ``transport/``, …); the order in
which they handle a query is declared once, in :mod:`ztdns.pipeline`.
"""

__version__ = "0.1.0"
