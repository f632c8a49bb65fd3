"""The chat page (`static/`: plain HTML and JS, no build step), served at "/"."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount
from starlette.types import Scope


class _Page(Mount):
    """The chat page at "/", but never for API paths (a wrong method there stays a 405)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            return Match.NONE, {}
        return super().matches(scope)


def mount_chat_page(app: FastAPI) -> None:
    static = resources.files("flowise_sse.api") / "static"
    if static.is_dir():
        app.router.routes.append(_Page("/", app=StaticFiles(directory=str(static), html=True), name="page"))
