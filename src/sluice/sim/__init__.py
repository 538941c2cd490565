"""A vLLM-compatible engine simulator: pure engine model, HTTP server, KV events."""
