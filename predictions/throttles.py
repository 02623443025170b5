"""API throttling, counted in the Redis cache so every gunicorn worker shares the counts.

A module of its own: DRF imports the throttle classes while defining APIView, so they
cannot live in a module that defines views.
"""

from django.conf import settings
from rest_framework import throttling


class UserThrottle(throttling.UserRateThrottle):
    """Requests per signed-in user (or per address when anonymous), API_THROTTLE_USER."""

    def get_rate(self) -> str:
        # Read per request, unlike DRF's class attribute, so the setting can be overridden.
        return settings.API_THROTTLE_USER


class AnonThrottle(throttling.AnonRateThrottle):
    """Requests per anonymous client address, API_THROTTLE_ANON."""

    def get_rate(self) -> str:
        return settings.API_THROTTLE_ANON
