"""The document registry: versioned documents, their chunks, ingestion and the vector index."""
