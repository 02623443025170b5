"""/readyz reports a stopped Redis: on the fault tests' own Redis, since it is stopped."""

import pytest

from stack.common import redis_url
from tests.faults.conftest import FAULT_STATE, REDIS_PORT

pytestmark = [pytest.mark.faults, pytest.mark.django_db]


def test_readyz_turns_503_when_redis_stops_and_200_when_it_returns(client, settings, fault_stack):
    settings.CELERY_BROKER_URL = redis_url(0, port=REDIS_PORT, state=FAULT_STATE)
    assert client.get("/readyz").status_code == 200
    fault_stack.down("redis")
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["services"]["redis"]["ok"] is False
        assert body["services"]["database"]["ok"] and body["services"]["kafka"]["ok"]
    finally:
        fault_stack.up("redis")
    assert client.get("/readyz").status_code == 200
