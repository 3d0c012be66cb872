"""Upstream backends by route kind."""
