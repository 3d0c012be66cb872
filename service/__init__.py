"""Provenant: an audit and provenance gateway for LLM answers."""

__version__ = "0.1.0"
