"""Sluice: an OpenAI-compatible gateway and control plane for self-hosted LLM inference."""

__version__ = "0.1.0"
