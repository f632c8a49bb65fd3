"""The HTTP API: the app factory, one router per route family, access control, the chat page."""

from .app import app_services, check_settings, create_app, flowise_problem

__all__ = ["app_services", "check_settings", "create_app", "flowise_problem"]
