"""Liveness (/healthz) and readiness (/readyz: database, Kafka and Redis reachable)."""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from kafka_wire.topics import check_reachable

CHECK_TIMEOUT_SECONDS = 2.0


def healthz(request):
    return JsonResponse({"status": "ok"})


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis() -> None:
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def check_kafka() -> None:
    check_reachable(CHECK_TIMEOUT_SECONDS)


CHECKS = {"database": check_database, "kafka": check_kafka, "redis": check_redis}


def readyz(request):
    services = {}
    for name, check in CHECKS.items():
        try:
            check()
            services[name] = {"ok": True}
        except Exception as exc:  # any failure means "not ready"; say what it was
            services[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ready = all(s["ok"] for s in services.values())
    return JsonResponse({"ready": ready, "services": services}, status=200 if ready else 503)
