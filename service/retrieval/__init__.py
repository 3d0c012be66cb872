"""Retrieval over the registry's vector index, the numbered-sources prompt, citation parsing,
the built-in extractive generator, and the verification of sources an external RAG app reports."""
