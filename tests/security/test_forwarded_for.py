"""The anonymous throttle counts a client by the address its connection comes from; the
X-Forwarded-For header is believed only from TRUSTED_PROXIES (issue 22), through which a
client cannot choose a new address for each request."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent.parent


def statuses(client, remote_addr: str, forwarded_for: list[str]) -> list[int]:
    """Anonymous reads of unknown jobs (404 until throttled), each with its own header."""
    return [
        client.get(
            f"/api/jobs/{uuid.uuid4()}/", REMOTE_ADDR=remote_addr, HTTP_X_FORWARDED_FOR=forged
        ).status_code
        for forged in forwarded_for
    ]


def test_a_client_forging_x_forwarded_for_is_throttled_by_its_own_address(client, settings):
    settings.API_THROTTLE_ANON = "2/hour"
    forged = [f"203.0.113.{i}" for i in range(3)]
    assert statuses(client, f"198.51.100.{uuid.uuid4().int % 250}", forged) == [404, 404, 429]


def test_clients_behind_a_trusted_proxy_are_throttled_each_by_its_forwarded_address(
    client, settings
):
    settings.API_THROTTLE_ANON = "1/hour"
    settings.TRUSTED_PROXIES = ["192.0.2.1", "198.51.100.0/24"]
    for proxy in ("192.0.2.1", "198.51.100.9"):
        first, second = (f"10.{uuid.uuid4().int % 250}.0.{i}" for i in (1, 2))
        assert statuses(client, proxy, [first, second, first]) == [404, 404, 429], proxy


def test_with_no_trusted_proxy_the_header_is_ignored_from_any_address(client, settings):
    settings.API_THROTTLE_ANON = "1/hour"
    settings.TRUSTED_PROXIES = []
    proxy = f"192.0.2.{uuid.uuid4().int % 250}"
    assert statuses(client, proxy, ["10.0.0.1", "10.0.0.2"]) == [404, 429]


def test_trusted_proxies_that_are_not_addresses_stop_start_up_naming_the_setting():
    result = subprocess.run(
        [sys.executable, "-c", "import inferencehub.settings"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "TRUSTED_PROXIES": "127.0.0.1,proxy.example"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr and "proxy.example" in result.stderr
