"""Tenants, API keys, roles and the access table."""
