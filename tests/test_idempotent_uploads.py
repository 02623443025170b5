"""An upload sent again with the same Idempotency-Key answers with the first one's jobs
instead of making new ones: a client whose answer was lost can retry safely."""

import contextlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from predictions.client import InferenceHubClient
from predictions.models import Job
from tests.conftest import DATA
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
FOX = (DATA / "fox.png").read_bytes()
BOLETE = (DATA / "bolete.jpg").read_bytes()
TOASTER = (DATA / "toaster.png").read_bytes()


def stored_files() -> set[Path]:
    root = Path(settings.MEDIA_ROOT)
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def upload(client: APIClient, *images: bytes, key: str | None = None, **fields):
    headers = {"Idempotency-Key": key} if key is not None else {}
    files = [SimpleUploadedFile(f"photo{i}", image) for i, image in enumerate(images)]
    return client.post(
        "/api/jobs/", {"image": files, **fields}, format="multipart", headers=headers
    )


@pytest.fixture
def client():
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


def test_the_same_upload_sent_again_answers_with_its_first_jobs(client):
    first = upload(client, FOX, BOLETE, key="order-17")
    files = stored_files()
    again = upload(client, FOX, BOLETE, key="order-17")
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert Job.objects.count() == 2
    assert stored_files() == files


def test_keys_are_per_user_and_another_key_makes_new_jobs(client):
    upload(client, FOX, key="k")
    other_user = APIClient()
    other_user.force_authenticate(UserFactory())
    assert upload(other_user, FOX, key="k").status_code == 202
    assert upload(client, FOX, key="k2").status_code == 202
    assert Job.objects.count() == 3


def test_a_key_reused_for_a_different_number_of_images_is_refused(client):
    upload(client, FOX, key="k")
    files = stored_files()
    response = upload(client, FOX, BOLETE, key="k")
    assert response.status_code == 422
    assert response.json()["error"] == (
        "Idempotency-Key k was used for another upload: 1 image(s) then; this one has 2"
    )
    assert Job.objects.count() == 1
    assert stored_files() == files


def test_a_key_reused_with_another_image_is_refused_naming_it(client):
    upload(client, FOX, BOLETE, key="k")
    files = stored_files()
    response = upload(client, FOX, TOASTER, key="k")
    assert response.status_code == 422
    assert response.json()["error"] == (
        "Idempotency-Key k was used for another upload: image 2 (photo1) differs from the "
        "one sent then"
    )
    assert "Idempotent-Replayed" not in response.headers
    assert Job.objects.count() == 2
    assert stored_files() == files


@pytest.mark.parametrize(
    ("first", "again", "error"),
    [
        ({"top_k": 5}, {"top_k": 3}, "top_k 5 then; this upload has top_k 3"),
        ({}, {"batch": "mine"}, "no batch then; this upload has batch {batch}"),
        (
            {"batch": "mine", "seq": 4},
            {"batch": "mine", "seq": 7},
            "seq 4 then; this upload has seq 7",
        ),
        ({"batch": "mine", "seq": 4}, {"batch": "mine"}, "seq 4 then; this upload has no seq"),
    ],
)
def test_a_key_reused_with_other_fields_is_refused_naming_the_field(client, first, again, error):
    batch = client.post("/api/batches/").json()["id"]

    def fields(given: dict) -> dict:
        return {name: batch if value == "mine" else value for name, value in given.items()}

    assert upload(client, FOX, key="k", **fields(first)).status_code == 202
    response = upload(client, FOX, key="k", **fields(again))
    assert response.status_code == 422
    assert response.json()["error"] == (
        "Idempotency-Key k was used for another upload: " + error.format(batch=batch)
    )
    assert Job.objects.count() == 1


def test_the_same_upload_with_its_default_top_k_spelled_out_is_the_same_upload(client):
    first = upload(client, FOX, key="k")
    again = upload(client, FOX, key="k", top_k=5)
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])


@pytest.mark.parametrize("key", ["", "x" * 101, "has space", "caf\u00e9"])
def test_a_malformed_key_is_refused_and_nothing_stored(client, key):
    files = stored_files()
    response = upload(client, FOX, key=key)
    assert response.status_code == 400
    assert "Idempotency-Key must be 1 to 100 printable ASCII characters" in response.json()["error"]
    assert not Job.objects.exists()
    assert stored_files() == files


def test_an_anonymous_upload_with_a_key_is_refused(settings):
    settings.ALLOW_ANONYMOUS_UPLOADS = True
    response = upload(APIClient(), FOX, key="k")
    assert response.status_code == 400
    assert (
        "only accepted from a signed-in user, or for an upload to a batch"
        in (response.json()["error"])
    )
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_with_one_key_make_one_set_of_jobs(live_server, user):
    from rest_framework.authtoken.models import Token

    headers = {
        "Authorization": f"Token {Token.objects.create(user=user).key}",
        "Idempotency-Key": "same",
    }

    def send(_):
        return requests.post(
            f"{live_server.url}/api/jobs/",
            files=[("image", ("fox.png", FOX))],
            headers=headers,
            timeout=60,
        )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(send, range(6)))
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
    assert accepted and set(accepted) == {str(Job.objects.get().pk)}
    # A loser of the race is told to send again, which then answers with the jobs.
    assert send(None).json()["id"] == accepted[0]
    assert len(stored_files_of(Job.objects.get())) == 1


def stored_files_of(job: Job) -> list[Path]:
    return [p for p in stored_files() if p.name == str(job.pk)]


class AnswerDroppingProxy:
    """Forwards connections to the server, but for the first one throws the server's answer
    away and hangs up: the upload is stored, and the client never hears so, as when the
    network or a proxy fails after the server did its work."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(
                    target=self.relay, args=(client, self.connections == 1), daemon=True
                ).start()

    def relay(self, client: socket.socket, drop_answer: bool) -> None:
        server = socket.create_connection(self.upstream)
        threading.Thread(target=pump, args=(client, server), daemon=True).start()
        if drop_answer:
            with contextlib.suppress(OSError):
                server.recv(65536)  # the server has answered: it stored the upload
            # shutdown, not just close: the pump thread is blocked reading this socket,
            # and only shutdown hangs up on the client while it is.
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        else:
            pump(server, client)

    def close(self) -> None:
        self.listener.close()


def pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.mark.django_db(transaction=True)
def test_the_client_resends_an_upload_whose_answer_was_lost_without_a_second_job(live_server, user):
    from rest_framework.authtoken.models import Token

    address = urlsplit(live_server.url)
    proxy = AnswerDroppingProxy((address.hostname, address.port))
    try:
        client = InferenceHubClient(proxy.url, Token.objects.create(user=user).key)
        [job] = client.upload_files([DATA / "fox.png"], top_k=3)
    finally:
        proxy.close()
    assert proxy.connections == 2
    assert str(Job.objects.get().pk) == job["id"]


# --- The seed API's /image and anonymous uploads to a batch ----------------------------


def seed_image(client, batch_id: str, *, key: str, seq: int = 0, image: bytes = FOX):
    return client.post(
        "/image",
        {"uuid": batch_id, "seq": seq, "topk": 3, "payload": SimpleUploadedFile("fox", image)},
        format="multipart",
        headers={"Idempotency-Key": key},
    )


def test_a_seed_image_sent_again_with_its_key_makes_one_job():
    seed = APIClient()  # the seed's clients hold no credentials: the uuid is the capability
    batch = seed.post("/register").json()["uuid"]
    first = seed_image(seed, batch, key="k")
    files = stored_files()
    again = seed_image(seed, batch, key="k")
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.content, again.content) == (b"", b"")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert Job.objects.get().seq == 0
    assert stored_files() == files


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"seq": 1}, "seq 0 then; this upload has seq 1"),
        ({"image": BOLETE}, "image 1 (fox) differs from the one sent then"),
    ],
)
def test_a_seed_key_sent_again_with_another_image_or_seq_is_refused(change, error):
    seed = APIClient()
    batch = seed.post("/register").json()["uuid"]
    seed_image(seed, batch, key="k")
    response = seed_image(seed, batch, key="k", **change)
    assert response.status_code == 422
    assert response.json()["error"] == f"Idempotency-Key k was used for another upload: {error}"
    assert Job.objects.count() == 1


def test_an_anonymous_key_belongs_to_its_batch():
    """The same key in another batch is another upload, and says nothing of the first."""
    seed = APIClient()
    batches = [seed.post("/register").json()["uuid"] for _ in range(2)]
    assert [seed_image(seed, batch, key="k").status_code for batch in batches] == [200, 200]
    assert Job.objects.filter(upload_key="k").count() == 2


def test_an_anonymous_page_upload_to_its_batch_sent_again_makes_one_job(settings):
    settings.ALLOW_ANONYMOUS_UPLOADS = True
    anonymous = APIClient()
    batch = anonymous.post("/api/batches/").json()["id"]
    first = upload(anonymous, FOX, key="page-key", batch=batch)
    again = upload(anonymous, FOX, key="page-key", batch=batch)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_seed_image_whose_answer_was_lost_is_resent_without_a_second_job(live_server):
    address = urlsplit(live_server.url)
    proxy = AnswerDroppingProxy((address.hostname, address.port))
    batch = requests.post(f"{live_server.url}/register", timeout=30).json()["uuid"]

    def send():
        return requests.post(
            f"{proxy.url}/image",
            data={"uuid": batch, "seq": 0, "topk": 3},
            files={"payload": ("fox.png", FOX)},
            headers={"Idempotency-Key": "seed-resend"},
            timeout=30,
        )

    try:
        with pytest.raises(requests.ConnectionError):
            send()
        again = send()
    finally:
        proxy.close()
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert Job.objects.get().seq == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_anonymous_uploads_with_one_key_to_a_batch_make_one_job(live_server, settings):
    """No unique index holds a key without an owner: the batch's lock must."""
    settings.ALLOW_ANONYMOUS_UPLOADS = True
    batch = requests.post(f"{live_server.url}/api/batches/", timeout=30).json()["id"]

    def send(_):
        return requests.post(
            f"{live_server.url}/api/jobs/",
            data={"batch": batch},
            files=[("image", ("fox.png", FOX))],
            headers={"Idempotency-Key": "same"},
            timeout=60,
        )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(send, range(6)))
    assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
    assert send(None).json()["id"] == str(Job.objects.get().pk)
