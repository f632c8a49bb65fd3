"""Stream runs and their event logs: in memory, encoded once as SSE, mirrored to Redis if set."""

from .manager import StreamManager
from .memory_store import MemoryStore
from .run import StreamRun

__all__ = ["MemoryStore", "StreamManager", "StreamRun"]
