from fixtures.tls import pki

__all__ = ["pki"]
