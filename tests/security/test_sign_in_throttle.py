"""Failed sign-ins lock out their account and their address, on every sign-in form, with
a clear message (issue 22, item 5)."""

import pytest
from axes.utils import reset
from django.conf import settings

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SIGN_IN_FORMS = ["/accounts/login/", "/admin/login/", "/api-auth/login/"]


@pytest.fixture
def addresses():
    """Addresses of this test's own (the rest of the suite signs in from 127.0.0.1), whose
    counts are cleared afterwards."""
    used = ["203.0.113.7", "203.0.113.8"]
    yield used
    for address in used:
        reset(ip=address)


def sign_in(client, url: str, username: str, password: str, address: str):
    return client.post(
        url, {"username": username, "password": password, "next": "/"}, REMOTE_ADDR=address
    )


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("url", SIGN_IN_FORMS)
def test_an_account_is_locked_after_the_failure_limit_even_with_the_right_password(
    client, url, addresses
):
    user = UserFactory(is_staff=True, password="right-password")
    first, second = addresses
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, url, user.username, "wrong", first).status_code == 200
    # The failure that reaches the limit is answered with the lockout.
    assert sign_in(client, url, user.username, "wrong", first).status_code == 429
    # The account is locked, from any address.
    refused = sign_in(client, url, user.username, "right-password", second)
    assert refused.status_code == 429
    assert b"too many failed sign-ins" in refused.content
    assert refused["Retry-After"] == str(settings.LOGIN_LOCKOUT_MINUTES * 60)
    assert not signed_in(client)
    reset(username=user.username)
    assert sign_in(client, url, user.username, "right-password", second).status_code == 302
    assert signed_in(client)


def test_an_address_is_locked_after_failures_on_many_accounts(client, addresses):
    first, second = addresses
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "/accounts/login/", f"guess{n}", "wrong", first)
    user = UserFactory(password="right-password")
    refused = sign_in(client, "/accounts/login/", user.username, "right-password", first)
    assert refused.status_code == 429 and b"this address" in refused.content
    assert not signed_in(client)
    # The same account from another address is not locked.
    assert (
        sign_in(client, "/accounts/login/", user.username, "right-password", second).status_code
        == 302
    )


def test_the_address_counted_is_the_one_the_proxy_saw(client, addresses):
    first, _ = addresses
    user = UserFactory(password="right-password")
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            "/accounts/login/",
            {"username": f"other{n}", "password": "wrong"},
            REMOTE_ADDR="127.0.0.1",  # the proxy, which is trusted
            HTTP_X_FORWARDED_FOR=first,
        )
    refused = client.post(
        "/accounts/login/",
        {"username": user.username, "password": "right-password"},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR=first,
    )
    assert refused.status_code == 429
    # The proxy's other clients are not locked out with it.
    accepted = client.post(
        "/accounts/login/",
        {"username": user.username, "password": "right-password"},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.99",
    )
    assert accepted.status_code == 302
    reset(ip="203.0.113.99")
