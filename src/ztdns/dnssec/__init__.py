"""DNSSEC: signing (signing, nsec3, kasp, keys) for the authority; validation for the resolver."""
