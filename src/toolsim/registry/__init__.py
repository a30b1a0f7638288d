"""The registry both services read: toolsets and episodes, in Redis or in memory."""

from toolsim.registry.base import Registry
from toolsim.registry.memory import MemoryRegistry
from toolsim.registry.redis import RedisRegistry, redis_client

__all__ = ["MemoryRegistry", "RedisRegistry", "Registry", "redis_client"]
