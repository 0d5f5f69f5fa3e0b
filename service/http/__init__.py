"""The HTTP face of the server: OpenAI-compatible completions (JSON and server-sent events) and a playground
page that colours the text by a hidden unit as it streams. gRPC stays the primary API (docs/api.md)."""

from service.http.app import HttpFace

__all__ = ["HttpFace"]
