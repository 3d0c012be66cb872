"""Privacy: legal holds, retention, erasure by data subject."""
