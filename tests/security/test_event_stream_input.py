"""A batch's event stream refuses odd input with a 400 naming it, instead of a 500 or a
stream that dies of an overflow (issue 22, item 9); and a throttle rate's count must be
ASCII digits too."""

import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from tests.factories import BatchFactory

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def owner_client():
    batch = BatchFactory()
    client = APIClient()
    client.force_authenticate(batch.owner)
    return client, f"/api/batches/{batch.pk}/events/"


@pytest.mark.parametrize("last_event_id", ["²", "٣", "-1", "1.5", "99999999999999999999"])
def test_a_malformed_last_event_id_answers_400_naming_the_header(owner_client, last_event_id):
    client, url = owner_client
    response = client.get(url, headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["error"]


@pytest.mark.parametrize("since", ["99999999999999999999", "253402300800000", "-5", "x"])
def test_a_since_out_of_range_answers_400_naming_it(owner_client, since):
    client, url = owner_client
    response = client.get(url, {"since": since})
    assert response.status_code == 400
    assert "since" in response.json()["error"]


def test_a_throttle_rate_with_a_non_ascii_digit_stops_start_up_naming_it():
    result = subprocess.run(
        [sys.executable, "-c", "import inferencehub.settings"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PAGE_THROTTLE": "²/hour"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "PAGE_THROTTLE" in result.stderr
