"""Compliance reports and evidence packs."""
