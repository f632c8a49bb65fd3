"""Flowise, upstream: its HTTP client, the prediction, the two streaming transports, normalization."""

from .adapter import Upstream

__all__ = ["Upstream"]
