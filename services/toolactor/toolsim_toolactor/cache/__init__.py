"""The observation cache seam: Redis (shared, persistent) or an in-process LRU."""

from toolsim_toolactor.cache.base import ObservationCache
from toolsim_toolactor.cache.memory import MemoryCache
from toolsim_toolactor.cache.near import NearCache
from toolsim_toolactor.cache.redis import RedisCache

__all__ = ["MemoryCache", "NearCache", "ObservationCache", "RedisCache"]
