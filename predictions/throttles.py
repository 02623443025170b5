"""API throttling, counted in the Redis cache so every gunicorn worker shares the counts.

A module of its own: DRF imports the throttle classes while defining APIView, so they
cannot live in a module that defines views.
"""

import logging

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


class UserThrottle(OpenWhenCacheIsDown, throttling.UserRateThrottle):
    """Requests per signed-in user (or per address when anonymous), API_THROTTLE_USER."""

    def get_rate(self) -> str:
        # Read per request, unlike DRF's class attribute, so the setting can be overridden.
        return settings.API_THROTTLE_USER


class AnonThrottle(OpenWhenCacheIsDown, throttling.AnonRateThrottle):
    """Requests per anonymous client address, API_THROTTLE_ANON."""

    def get_rate(self) -> str:
        return settings.API_THROTTLE_ANON
