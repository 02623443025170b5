"""Which callback URLs may be called (common/callbacks.py), with DNS answered by the test,
and the webhook signature a receiver checks as it checks Stripe's (webhooks/signing.py)."""

import contextlib
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from common.callbacks import (
    AllowList,
    CallbackRefused,
    Unresolvable,
    check_callback_url,
    parse_allow_list,
)
from stack.certs import make_ca, make_signed
from tests.conftest import REPO
from webhooks.services import pinned_session, post_within
from webhooks.signing import signature

NOTHING_ALLOWED = AllowList()


def resolving_to(*addresses: str):
    def resolver(host: str, port: int):
        return [ipaddress.ip_address(address) for address in addresses]

    return resolver


def refusal(url: str, *addresses: str, allowed: AllowList = NOTHING_ALLOWED) -> str | None:
    """Why the URL is refused when its host resolves to these addresses; None if it is not."""
    try:
        check_callback_url(url, allowed=allowed, resolver=resolving_to(*addresses))
    except CallbackRefused as exc:
        return str(exc)
    return None


def test_a_public_https_or_http_url_is_accepted():
    assert refusal("https://hooks.example.com/done", "93.184.215.14") is None
    assert refusal("http://hooks.example.com:8080/done", "2606:2800:21f:cb07::1") is None


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.com/", "file:///etc/passwd", "gopher://x/", "hooks.example.com"]
)
def test_a_url_that_is_not_http_or_https_is_refused(url):
    assert refusal(url, "93.184.215.14") == "must be an http or https URL"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.0.0.8", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("100.64.0.1", "not a public address"),
    ],
)
def test_a_host_resolving_to_an_address_that_is_not_public_is_refused(address, kind):
    assert refusal("https://hooks.example.com/x", address) == (
        f"is refused: hooks.example.com ({ipaddress.ip_address(address)}) is {kind}"
    )


def test_one_bad_address_among_the_answers_is_enough_to_refuse():
    assert "10.0.0.8" in refusal("https://h.example.com/", "93.184.215.14", "10.0.0.8")


def test_an_address_written_in_the_url_is_judged_as_it_is():
    assert refusal("http://127.0.0.1:9000/", "127.0.0.1") == (
        "is refused: 127.0.0.1 is a loopback address"
    )


def test_an_allow_listed_network_or_host_is_accepted():
    allowed = parse_allow_list("127.0.0.0/8, hooks.internal")
    assert refusal("http://127.0.0.1:9000/", "127.0.0.1", allowed=allowed) is None
    assert refusal("http://hooks.internal/", "10.9.9.9", allowed=allowed) is None
    assert refusal("http://other.internal/", "10.9.9.9", allowed=allowed) is not None


def test_a_host_that_does_not_resolve_is_refused_as_unresolvable():
    def failing(host: str, port: int):
        raise OSError("Name or service not known")

    with pytest.raises(Unresolvable, match="does not resolve"):
        check_callback_url("https://nowhere.example/", allowed=NOTHING_ALLOWED, resolver=failing)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/a\r\nX-Injected: 1",
        "http://hooks.example.com/a b",
        "http://hooks.example.com/\t",
    ],
)
def test_white_space_or_control_characters_in_the_url_are_refused(url):
    assert refusal(url, "93.184.215.14") == "must not contain white space or control characters"


def test_credentials_in_the_url_are_refused():
    assert refusal("https://me:pw@hooks.example.com/", "93.184.215.14") == (
        "must not carry a user name or password"
    )


def test_the_allow_list_names_an_item_that_is_neither_network_nor_host():
    with pytest.raises(ValueError, match="'10.0.0.0/33' is neither"):
        parse_allow_list("127.0.0.1,10.0.0.0/33")


def test_a_malformed_allow_list_stops_start_up_naming_the_setting():
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="inferencehub.settings",
        WEBHOOK_ALLOWED_NETWORKS="10.0.0.0/8,not a host",
    )
    checked = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "check"], env=env, capture_output=True, text=True
    )
    assert checked.returncode != 0
    assert "Setting WEBHOOK_ALLOWED_NETWORKS is malformed: 'not a host'" in checked.stderr


def verify(header: str, body: bytes, secret: str, *, tolerance_s: int = 300) -> bool:
    """A receiver's check, as Stripe's libraries make it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected.hexdigest(), fields["v1"])


def test_the_signature_verifies_as_stripes_do_and_not_for_another_body_or_secret():
    body = b'{"id": "6f1c", "status": "succeeded"}'
    header = signature("whsec_abc", int(time.time()), body)
    assert header.startswith("t=")
    assert verify(header, body, "whsec_abc")
    assert not verify(header, body.replace(b"succeeded", b"failed"), "whsec_abc")
    assert not verify(header, body, "whsec_other")
    assert not verify(signature("whsec_abc", int(time.time()) - 3600, body), body, "whsec_abc")


class Receiver:
    """An HTTP(S) server on 127.0.0.1 answering 204, keeping each request's Host header."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hosts: list[str] = []
        hosts = self.hosts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hosts.append(self.headers["Host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port

    def __enter__(self) -> "Receiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


LOOPBACK = ipaddress.ip_address("127.0.0.1")


def test_a_webhook_connects_to_the_address_checked_not_to_what_dns_says_later():
    """The host's name is sent (the Host header), but the connection goes to the checked
    address: here "rebound.invalid", which resolves nowhere."""
    with Receiver() as receiver, pinned_session(LOOPBACK) as session:
        url = f"http://rebound.invalid:{receiver.port}/hook"
        assert session.post(url, data=b"{}", timeout=5).status_code == 204
    assert receiver.hosts == [f"rebound.invalid:{receiver.port}"]


def test_a_receiver_that_trickles_its_answer_is_cut_off_when_the_attempts_time_is_up():
    """A byte every half second never trips a per-read timeout; the attempt still ends
    after its total time, so a slow receiver cannot hold the worker's threads."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.5):
                with contextlib.suppress(OSError):
                    connection.sendall(b"X")

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://hooks.test:{listener.getsockname()[1]}/slow"
    started = time.monotonic()
    try:
        with pytest.raises(requests.Timeout, match="no whole answer within 1.5 s"):
            post_within(url, address=LOOPBACK, body=b"{}", headers={}, total_s=1.5)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 5


def test_a_pinned_https_webhook_still_checks_the_certificate_against_the_urls_host(tmp_path):
    ca = make_ca(tmp_path)
    key, cert = make_signed(tmp_path, "hooks", ca, "subjectAltName=DNS:hooks.test\n")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with Receiver(tls) as receiver, pinned_session(LOOPBACK) as session:
        answer = session.post(f"https://hooks.test:{receiver.port}/", verify=str(ca[1]), timeout=5)
        assert answer.status_code == 204
        with pytest.raises(requests.exceptions.SSLError):
            session.post(f"https://other.test:{receiver.port}/", verify=str(ca[1]), timeout=5)
    assert receiver.hosts == [f"hooks.test:{receiver.port}"]
