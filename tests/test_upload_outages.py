"""An upload whose jobs are committed is answered 202 even if the database goes away just
after the commit: the jobs wait for the next dispatch, and a 503 would tell the client
that jobs it will find later were refused (the fault suite's MariaDB outage found this)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError, connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from predictions.authentication import forget_tokens
from predictions.models import Job
from tests.conftest import DATA
from tests.factories import UserFactory, staff_user

pytestmark = pytest.mark.django_db(transaction=True)
FOX = (DATA / "fox.png").read_bytes()


@pytest.fixture
def database_gone_at_dispatch(monkeypatch):
    """The dispatcher run after the upload's commit finds the database gone, and every
    later query of the request fails the same way."""

    def refuse(execute, sql, params, many, context):
        raise DatabaseError("(2006, 'Server has gone away')")

    def dispatch_jobs(**_kwargs):
        connection.execute_wrappers.append(refuse)
        raise DatabaseError("(2006, 'Server has gone away')")

    monkeypatch.setattr("predictions.uploads.dispatch_jobs", dispatch_jobs)
    yield
    if refuse in connection.execute_wrappers:
        connection.execute_wrappers.remove(refuse)


def token_client(user) -> APIClient:
    forget_tokens()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.parametrize("signed_in", [token_client, session_client], ids=["token", "session"])
@pytest.mark.parametrize(
    "who",
    [UserFactory, staff_user, lambda: staff_user("view_job")],
    ids=["user", "staff", "staff-viewer"],
)
def test_an_upload_committed_before_the_database_went_away_is_answered_202(
    database_gone_at_dispatch, signed_in, who
):
    client = signed_in(who())
    answer = client.post(
        "/api/jobs/", {"image": [SimpleUploadedFile("fox.png", FOX)]}, format="multipart"
    )
    connection.execute_wrappers.clear()  # the database is back
    assert answer.status_code == 202, answer.content
    assert str(Job.objects.get().pk) == answer.json()["id"]
