"""What answers come from: model snapshots (and, with the RAG issue, documents and chunks)."""
