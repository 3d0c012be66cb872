"""Governance policies: the bundle format, the pure evaluation engine and reloads."""
