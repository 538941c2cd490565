"""HTTP surface: OpenAI routes, admin routes, error bodies."""
