"""API throttling, counted in the Redis cache so every gunicorn worker shares the counts.

A module of its own: DRF imports the throttle classes while defining APIView, so they
cannot live in a module that defines views.
"""

import logging
import math
import threading

import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import throttling

from common.clients import client_address
from common.errors import SEED_API_PATHS, error_answer

log = logging.getLogger(__name__)


class OpenWhenCacheIsDown:
    """Lets requests through while Redis is away: throttling guards against abuse, and an
    outage of its counter store must not turn every API request into a 500. Uploads then
    get 503 from the task queue being away too (uploads.create_jobs)."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            log.warning("throttling skipped, the cache is unavailable: %s", exc)
            return True


# A throttle that waits for a silent Redis holds the request: give up soon and let it pass.
COUNTER_TIMEOUT_S = 2.0


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def counter_client(location: str) -> redis.Redis:
    """The process's one client for the cache's Redis (by LOCATION, which tests override).

    Made under a lock: a second client made by a racing thread and then dropped closes its
    connections when collected, under the pipeline still using one (a 500 seen under load)."""
    with _clients_lock:
        if location not in _clients:
            _clients[location] = redis.Redis.from_url(
                location,
                socket_connect_timeout=COUNTER_TIMEOUT_S,
                socket_timeout=COUNTER_TIMEOUT_S,
            )
        return _clients[location]


class ByClientAddress:
    """Anonymous clients are told apart by common.clients.client_address: DRF's own
    get_ident takes X-Forwarded-For from anyone, so a client could pick a new address for
    each request and never be throttled."""

    def get_ident(self, request) -> str:
        return client_address(request)


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
        # The count expires with its window; SET NX leaves a running count alone. Both
        # commands go in one round trip on a client kept for the process (the cache API
        # takes two, each on a client object built anew).
        key = self.cache.make_and_validate_key(self.key)
        pipe = counter_client(settings.CACHES["default"]["LOCATION"]).pipeline(transaction=False)
        pipe.set(key, 0, ex=math.ceil(self.window_ends - now), nx=True)
        pipe.incr(key)
        count = pipe.execute()[1]
        return count <= self.num_requests

    def wait(self) -> float:
        return max(self.window_ends - self.timer(), 0.0)


class UserThrottle(
    OpenWhenCacheIsDown, ByClientAddress, CountedPerWindow, throttling.UserRateThrottle
):
    """Requests per signed-in user (or per address when anonymous), API_THROTTLE_USER."""

    def get_rate(self) -> str:
        # Read per request, unlike DRF's class attribute, so the setting can be overridden.
        return settings.API_THROTTLE_USER


class AnonThrottle(
    OpenWhenCacheIsDown, ByClientAddress, CountedPerWindow, throttling.AnonRateThrottle
):
    """Requests per anonymous client address, API_THROTTLE_ANON."""

    def get_rate(self) -> str:
        return settings.API_THROTTLE_ANON


class ImageThrottle(
    OpenWhenCacheIsDown, ByClientAddress, CountedPerWindow, throttling.UserRateThrottle
):
    """Thumbnails and originals served per signed-in user (or per address when anonymous),
    IMAGE_THROTTLE: each is a read of the store, and an old job's first thumbnail a decode."""

    scope = "images"

    def get_rate(self) -> str:
        return settings.IMAGE_THROTTLE


class PageThrottle(
    OpenWhenCacheIsDown, ByClientAddress, CountedPerWindow, throttling.UserRateThrottle
):
    """Web pages (the site's, the admin's, the sign-in forms) per signed-in user (or per
    address when anonymous), PAGE_THROTTLE: each is a render with its queries."""

    scope = "pages"

    def get_rate(self) -> str:
        return settings.PAGE_THROTTLE


# Routes counted by a throttle of their own: the job images (ImageThrottle).
OWN_THROTTLE_ROUTES = {"job-image", "job-original"}
# Paths that are not pages: the API and the seed API have their own throttles.
NOT_PAGES = ("/api/", "/static/", "/healthz", "/readyz", "/metrics")


def is_page(path: str) -> bool:
    return not path.startswith(NOT_PAGES) and path.rstrip("/") not in SEED_API_PATHS


class PageThrottleMiddleware:
    """Counts every request routed to a page view against PAGE_THROTTLE; the API (DRF's
    throttles), the seed API (the anonymous throttle), the health checks, /metrics and the
    static files are counted elsewhere or not at all. After AuthenticationMiddleware, so
    that a signed-in user is counted as themselves wherever they connect from."""

    # Both modes: a sync-only middleware would cost the held process a thread per request
    # (inferencehub/asgi.py). Django runs process_view, which asks Redis, in a thread.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        # In async mode get_response's coroutine is returned for Django to await.
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        if match.url_name in OWN_THROTTLE_ROUTES or not is_page(request.path_info):
            return None
        throttle = PageThrottle()
        if throttle.allow_request(request, None):
            return None
        wait = math.ceil(throttle.wait())
        response = error_answer(
            request, 429, f"too many pages requested; try again in {wait} seconds"
        )
        response["Retry-After"] = str(wait)
        return response
