"""API throttling, counted in the Redis cache so every gunicorn worker shares the counts.

A module of its own: DRF imports the throttle classes while defining APIView, so they
cannot live in a module that defines views.
"""

import logging
import math

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import throttling

log = logging.getLogger(__name__)


class OpenWhenCacheIsDown:
    """Lets requests through while Redis is away: throttling guards against abuse, and an
    outage of its counter store must not turn every API request into a 500. Uploads then
    get 503 from the task queue being away too (services.create_jobs)."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            log.warning("throttling skipped, the cache is unavailable: %s", exc)
            return True


class CountedPerWindow:
    """Counts a client's requests in fixed windows of the rate's period (aligned to the
    clock), one Redis INCR per request. DRF's own throttle keeps the time of every request
    of the period in one cache value, read and written whole on each request: at the
    default 100,000 an hour, a busy client's requests grew dearer the busier it was."""

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        now = self.timer()
        self.window_ends = (now // self.duration + 1) * self.duration
        # The count expires with its window; add() leaves a running count alone.
        timeout = math.ceil(self.window_ends - now)
        self.cache.add(self.key, 0, timeout=timeout)
        try:
            count = self.cache.incr(self.key)
        except ValueError:  # the count expired between the two calls: a new window
            self.cache.set(self.key, 1, timeout=timeout)
            count = 1
        return count <= self.num_requests

    def wait(self) -> float:
        return max(self.window_ends - self.timer(), 0.0)


class UserThrottle(OpenWhenCacheIsDown, CountedPerWindow, throttling.UserRateThrottle):
    """Requests per signed-in user (or per address when anonymous), API_THROTTLE_USER."""

    def get_rate(self) -> str:
        # Read per request, unlike DRF's class attribute, so the setting can be overridden.
        return settings.API_THROTTLE_USER


class AnonThrottle(OpenWhenCacheIsDown, CountedPerWindow, throttling.AnonRateThrottle):
    """Requests per anonymous client address, API_THROTTLE_ANON."""

    def get_rate(self) -> str:
        return settings.API_THROTTLE_ANON
