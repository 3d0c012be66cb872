"""Tamper evidence: Merkle tree, checkpoints, receipts, verification."""
