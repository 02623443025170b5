"""Web pages are throttled per signed-in user, or per address when anonymous (issue 22,
item 6), while the API keeps its own throttle."""

import uuid

import pytest

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def an_address() -> str:
    # Counts live for the window; a fresh address keeps runs and tests apart.
    return f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def test_pages_past_the_rate_answer_429_with_retry_after(client, settings):
    settings.PAGE_THROTTLE = "3/hour"
    address = an_address()
    answers = [client.get("/accounts/login/", REMOTE_ADDR=address) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert b"too many pages requested" in answers[-1].content
    assert 0 < int(answers[-1]["Retry-After"]) <= 3600
    # Another address, and the API, are not counted with it.
    assert client.get("/accounts/login/", REMOTE_ADDR=an_address()).status_code == 200
    assert client.get("/healthz", REMOTE_ADDR=address).status_code == 200


def test_a_signed_in_user_is_counted_as_themselves_from_any_address(client, settings):
    settings.PAGE_THROTTLE = "2/hour"
    client.force_login(UserFactory())
    codes = [client.get("/my/jobs/", REMOTE_ADDR=an_address()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
