"""OpenAI-compatible routes under /v1; wire types in protocol.py."""
