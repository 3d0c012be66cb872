"""Audit records and their lineage: models, repository, service, endpoints."""
