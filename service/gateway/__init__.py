"""The data plane: endpoints, one answer's pipeline, upstream backends, streaming, writer."""
