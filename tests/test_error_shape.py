"""Errors in one shape: JSON {"error": ...} from the API and the seed API, a branded page
from the web pages, never Django's debug page (make run runs with DEBUG on)."""

import json
import uuid

import pytest
import requests

from predictions import selectors
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)

DEBUG_PAGE_MARKERS = ("Using the URLconf", "Traceback", "DEBUG = True", "technical")


@pytest.fixture(autouse=True)
def debug_on(settings):
    settings.DEBUG = True  # as under make run: the debug pages must still not show


def assert_json_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body


def assert_branded_page(response: requests.Response, status: int) -> str:
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "InferenceHub" in page and 'href="/"' in page
    for marker in DEBUG_PAGE_MARKERS:
        assert marker not in page
    return page


def test_unknown_api_paths_and_jobs_answer_404_in_json(api):
    body = assert_json_error(api.get(f"{api.base_url}/api/nothing/"), 404)
    assert "/api/nothing/" in body["error"]
    assert_json_error(api.get(f"{api.base_url}/api/jobs/{uuid.uuid4()}/"), 404)
    assert_json_error(api.get(f"{api.base_url}/api/jobs/not-a-uuid/"), 404)


def test_a_wrong_method_answers_405_in_json_naming_the_allowed_ones(api, live_server):
    response = api.put(f"{api.base_url}/api/jobs/")
    body = assert_json_error(response, 405)
    assert body["error"] == "method PUT is not allowed here; allowed: GET, POST, HEAD, OPTIONS"
    assert response.headers["Allow"] == "GET, POST, HEAD, OPTIONS"
    for path, method, allowed in (("/register", "get", "POST"), ("/result", "post", "GET")):
        response = getattr(requests, method)(f"{live_server.url}{path}")
        body = assert_json_error(response, 405)
        assert allowed in body["error"] and response.headers["Allow"] == allowed


def test_the_seed_api_switched_off_answers_404_in_json(live_server, settings):
    settings.SEED_API_ENABLED = False
    assert_json_error(requests.post(f"{live_server.url}/register"), 404)


def test_a_session_post_without_its_csrf_token_answers_403_in_json(live_server, user):
    session = requests.Session()
    login = f"{live_server.url}/accounts/login/"
    session.get(login)
    session.post(
        login,
        {"username": "alice", "password": "alice-password", "next": "/"},
        headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": login},
    )
    assert "sessionid" in session.cookies
    body = assert_json_error(session.post(f"{live_server.url}/api/batches/"), 403)
    assert "CSRF" in body["error"]


def test_a_page_post_without_its_csrf_token_gets_the_branded_403_page(live_server):
    page = assert_branded_page(requests.post(f"{live_server.url}/accounts/logout/"), 403)
    assert "CSRF" in page


def test_an_unknown_page_gets_the_branded_404_page(live_server):
    page = assert_branded_page(requests.get(f"{live_server.url}/no/such/page/"), 404)
    assert "/no/such/page/" in page
    # Page paths without their slash are still redirected first.
    job_id = uuid.uuid4()
    response = requests.get(f"{live_server.url}/jobs/{job_id}", allow_redirects=False)
    assert response.status_code == 301 and response.headers["Location"] == f"/jobs/{job_id}/"


def test_a_get_to_a_post_only_page_gets_the_branded_405_page(live_server):
    page = assert_branded_page(requests.get(f"{live_server.url}/jobs/{uuid.uuid4()}/retry/"), 405)
    assert "POST" in page


def test_a_server_error_is_a_branded_page_or_json_and_is_logged(
    live_server, api, monkeypatch, caplog
):
    job = JobFactory(owner=None)

    def broken(*args, **kwargs):
        raise RuntimeError("selector broke")

    monkeypatch.setattr(selectors, "visible_jobs", broken)
    assert_branded_page(requests.get(f"{live_server.url}/jobs/{job.pk}/"), 500)
    assert_json_error(api.get(f"{api.base_url}/api/jobs/{job.pk}/"), 500)
    assert "selector broke" in caplog.text


def test_a_signed_out_visitor_following_a_job_link_is_sent_to_sign_in(live_server):
    job = JobFactory()
    response = requests.get(f"{live_server.url}/jobs/{job.pk}/", allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/accounts/login/?next=/jobs/{job.pk}/"
    batch_response = requests.get(
        f"{live_server.url}/batches/{uuid.uuid4()}/", allow_redirects=False
    )
    assert batch_response.headers["Location"].startswith("/accounts/login/?next=/batches/")


def test_a_signed_in_user_gets_404_for_someone_elses_job(client):
    job = JobFactory()
    client.force_login(JobFactory().owner)
    response = client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 404 and b"InferenceHub" in response.content


def test_a_json_body_over_the_memory_limit_answers_413_saying_so(api, settings):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"name": "x" * (limit + 1)})
    response = api.post(
        f"{api.base_url}/api/batches/", data=body, headers={"Content-Type": "application/json"}
    )
    error = assert_json_error(response, 413)["error"]
    assert error == f"the request's fields are over the limit of {limit} bytes"
