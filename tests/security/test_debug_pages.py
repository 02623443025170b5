"""No visitor ever sees Django's debug page, whatever DEBUG is, including for errors that
other middleware raise before any view runs (issue 22, item 3)."""

import uuid

import pytest
import requests

from tests.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)

DEBUG_PAGE_MARKERS = ("Traceback", "DEBUG = True", "technical", "SECRET_KEY", "settings")


@pytest.fixture(params=[True, False], ids=["debug", "no-debug"])
def debug(request, settings):
    settings.DEBUG = request.param  # make run has run with it on
    return request.param


def assert_no_debug_page(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text[:300]
    for marker in DEBUG_PAGE_MARKERS:
        assert marker not in response.text, marker
    assert "InferenceHub" in response.text or response.json()["error"]


def test_a_foreign_host_header_gets_a_branded_400_not_the_debug_page(live_server, debug):
    # What a DNS-rebinding page's requests look like.
    for path in ("/", "/accounts/login/", "/api/jobs/"):
        response = requests.get(f"{live_server.url}{path}", headers={"Host": "evil.example"})
        assert_no_debug_page(response, 400)
    assert response.json() == {"error": "the request is malformed"}


def test_a_post_to_a_page_path_without_its_slash_gets_no_debug_page(live_server, debug):
    # Under DEBUG CommonMiddleware raises RuntimeError (it cannot redirect a POST's body);
    # without it, it redirects.
    job = JobFactory(owner=None)
    for path in ("/my/jobs", "/accounts/login", f"/jobs/{job.pk}/retry"):
        response = requests.post(f"{live_server.url}{path}", allow_redirects=False)
        if debug:
            assert_no_debug_page(response, 500)
            # The headers SecurityMiddleware set on the replaced answer stay.
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        else:
            assert response.status_code == 301, path


def test_an_unknown_page_under_a_foreign_host_leaks_no_url_patterns(live_server, debug):
    response = requests.get(
        f"{live_server.url}/no/{uuid.uuid4()}/", headers={"Host": "evil.example"}
    )
    assert_no_debug_page(response, 400)
    assert "Using the URLconf" not in response.text
