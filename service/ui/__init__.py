"""The auditor web UI."""
