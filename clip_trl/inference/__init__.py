"""Using a tuned model: captioner reranking (`rerank`)."""
