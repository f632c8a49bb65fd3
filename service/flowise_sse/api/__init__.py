"""The HTTP API: the app factory, one router per route family, access control, the chat page."""

from .app import create_app

__all__ = ["create_app"]
