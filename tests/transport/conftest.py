from tlsfixtures import pki

__all__ = ["pki"]
