"""A small Python client of the REST API, for scripts; `manage.py submit` is built on it.

    client = InferenceHubClient("http://127.0.0.1:8000", token)
    uploaded = client.upload([Path("cat.jpg")], top_k=3)
    jobs = client.wait([job["id"] for job in uploaded if "id" in job])

It needs only `requests`, not Django (common/limits.py, whose values it shares with the
server, imports nothing).
"""

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common.limits import TOP_K_DEFAULT, WAIT_MAX_SECONDS

REQUEST_TIMEOUT_S = 120.0
IMAGES_PER_REQUEST = 8
# An upload whose answer was lost, or that met a briefly unavailable server, is sent again
# with the same Idempotency-Key, so it never makes its jobs twice.
UPLOAD_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.5
UNAVAILABLE = (502, 503, 504)
FINISHED = ("succeeded", "failed", "cancelled", "expired")
# How long to wait before asking again when the server did not say (no Retry-After, or
# none it could be, such as an unreachable server's).
NOT_TOLD_WAIT_S = 1.0


class InferenceHubError(Exception):
    """The server refused a request (status is its HTTP code; fields, the form fields it
    named), or could not be reached."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        fields: dict | None = None,
        retry_after_s: float = NOT_TOLD_WAIT_S,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}
        self.retry_after_s = retry_after_s

    @property
    def transient(self) -> bool:
        """The server could not be reached or was briefly unavailable: asking again later
        may succeed."""
        return isinstance(self, ServerUnreachable) or self.status in UNAVAILABLE

    @property
    def about_one_file(self) -> bool:
        """The refusal may be about one file of the request (not an image, too big),
        rather than about the credentials or a form field that every request shares."""
        return self.status in (400, 413) and set(self.fields) <= {"image"}


class ServerUnreachable(InferenceHubError):
    pass


class WaitStopped(InferenceHubError):
    """Waiting ended with jobs unfinished; jobs holds every job answered for, as last seen."""

    def __init__(self, message: str, jobs: dict[str, dict]) -> None:
        super().__init__(message)
        self.jobs = jobs


class WaitTimeout(WaitStopped):
    """Some jobs had not finished in time."""


class InferenceHubClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.headers = {"Authorization": f"Token {token}"} if token else {}

    def request(self, method: str, path: str, *, headers: dict | None = None, **kwargs) -> dict:
        return self.send(method, path, headers=headers, **kwargs).json()

    def send(
        self, method: str, path: str, *, headers: dict | None = None, **kwargs
    ) -> requests.Response:
        """The answer, for its headers too. Raises InferenceHubError for a status of 400 or
        more, ServerUnreachable when there is none."""
        try:
            response = requests.request(
                method,
                self.server + path,
                headers={**self.headers, **(headers or {})},
                timeout=REQUEST_TIMEOUT_S,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise ServerUnreachable(f"cannot reach {self.server}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message, fields = body["error"], body.get("fields")
            except (ValueError, KeyError, TypeError, AttributeError):
                message, fields = response.text[:200], None
            raise InferenceHubError(
                f"HTTP {response.status_code}: {message}",
                response.status_code,
                fields,
                retry_after_s(response),
            )
        return response

    def create_batch(self) -> str:
        return self.request("POST", "/api/batches/")["id"]

    def upload_files(
        self,
        paths: list[Path],
        *,
        top_k: int = TOP_K_DEFAULT,
        batch: str | None = None,
        model: str | None = None,
        timeout_s: int | None = None,
        priority: str | None = None,
    ) -> list[dict]:
        """Upload images in one request, all or nothing; returns their jobs in order.
        timeout_s: each job ends expired, uninferred, if not inferred within it. priority:
        high, normal or low (None: the batch's, else normal).

        The request carries an Idempotency-Key and is sent again, up to UPLOAD_ATTEMPTS
        times, when the server cannot be reached, drops the connection or is briefly
        unavailable: the server then answers with the jobs of whichever attempt it got.
        Raises InferenceHubError when refused, ServerUnreachable after the last attempt.
        Without a token there is no key (the server takes keys from signed-in users only),
        so there is one attempt.
        """
        data = {"top_k": str(top_k)}
        if batch:
            data["batch"] = batch
        if timeout_s is not None:
            data["timeout_s"] = str(timeout_s)
        if priority is not None:
            data["priority"] = priority
        if model:  # NAME or NAME:VERSION
            name, _, version = model.partition(":")
            data["model"] = name
            if version:
                data["model_version"] = version
        keyed = bool(self.headers)
        headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
        attempts = UPLOAD_ATTEMPTS if keyed else 1
        attempt = 1
        while True:
            try:
                with contextlib.ExitStack() as stack:
                    files = [
                        ("image", (path.name, stack.enter_context(open(path, "rb"))))
                        for path in paths
                    ]
                    body = self.request(
                        "POST", "/api/jobs/", files=files, data=data, headers=headers
                    )
                return body.get("jobs", [body])
            except InferenceHubError as exc:
                # After a lost answer, 409 means our own earlier attempt is still being
                # stored; the next attempt gets its jobs.
                retry = exc.transient or (exc.status == 409 and attempt > 1)
                if not retry or attempt == attempts:
                    raise
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            attempt += 1

    def upload(
        self,
        paths: list[Path],
        *,
        top_k: int = TOP_K_DEFAULT,
        batch: str | None = None,
        model: str | None = None,
        timeout_s: int | None = None,
        priority: str | None = None,
        concurrency: int = 4,
        per_request: int = IMAGES_PER_REQUEST,
        on_uploaded: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        """Upload the files, per_request in each request: several images per request cost
        the server far less per image than one each (docs/performance.md). A request
        refused for one of its files stored nothing, so its files are sent again one by
        one and only a bad file is refused. A refusal that every request would get (a
        wrong token, a bad batch id) refuses the files not yet sent without sending them.

        Returns, in the order of paths, each job with "file" added, or for a refused file
        {"file": ..., "status": "rejected", "error": ...}; on_uploaded(results) is called
        as each request's results come in, from the uploading threads. Raises
        ServerUnreachable.
        """
        refused_all: list[str] = []  # the message of a refusal every request would get
        lock = threading.Lock()

        def rejected(chunk: list[Path], error: str) -> list[dict]:
            return [{"file": str(path), "status": "rejected", "error": error} for path in chunk]

        def attempt(chunk: list[Path]) -> list[dict]:
            if refused_all:
                return rejected(chunk, refused_all[0])
            try:
                jobs = self.upload_files(
                    chunk,
                    top_k=top_k,
                    batch=batch,
                    model=model,
                    timeout_s=timeout_s,
                    priority=priority,
                )
            except ServerUnreachable:
                raise
            except (InferenceHubError, OSError) as exc:
                if isinstance(exc, InferenceHubError) and not exc.about_one_file:
                    with lock:
                        refused_all.append(str(exc))
                    return rejected(chunk, str(exc))
                if len(chunk) > 1:
                    return [job for path in chunk for job in attempt([path])]
                return rejected(chunk, str(exc))
            return [{"file": str(path), **job} for path, job in zip(chunk, jobs, strict=True)]

        def send(chunk: list[Path]) -> list[dict]:
            results = attempt(chunk)
            if on_uploaded:
                on_uploaded(results)
            return results

        chunks = [paths[start : start + per_request] for start in range(0, len(paths), per_request)]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            try:
                return [job for jobs in pool.map(send, chunks) for job in jobs]
            except KeyboardInterrupt:
                # The requests under way end (their jobs reach on_uploaded); the others are
                # not sent.
                pool.shutdown(cancel_futures=True)
                raise

    def cancel(self, job_ids: list[str], *, concurrency: int = 4) -> int:
        """Cancel the jobs not yet finished; returns how many were cancelled. A finished
        job (409) is left as it is; any other refusal raises InferenceHubError."""

        def cancel_one(job_id: str) -> bool:
            try:
                self.request("POST", f"/api/jobs/{job_id}/cancel/")
            except InferenceHubError as exc:
                if exc.status == 409:
                    return False
                raise
            return True

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return sum(pool.map(cancel_one, job_ids))

    def cancel_batch(self, batch: str) -> int:
        """Cancel the batch's unfinished jobs in one request; returns how many."""
        return self.request("POST", f"/api/batches/{batch}/cancel/")["cancelled"]

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}/")

    def wait(
        self,
        job_ids: list[str],
        *,
        timeout_s: float = 600.0,
        on_progress: Callable[[dict[str, dict]], None] | None = None,
    ) -> dict[str, dict]:
        """Wait until every job has finished; returns each job by id.

        The jobs are taken in order, each asked about with held requests (`?wait=`) until
        it has finished: about one request per job plus one per 30 s of waiting, where
        polling would ask about every unfinished job each time. A job not yet asked about
        when the time is up is still fetched once, without waiting, so every job is seen.
        on_progress(jobs) is called after each answer that changed what is known, with
        every job seen so far. A server unreachable or answering 502-504 is asked again
        while time is left. Raises WaitTimeout, which holds every job as last seen, when
        some job has not finished within timeout_s (the last hold may end up to a second
        later), and WaitStopped, which holds every job answered for, on any other refusal
        (a job deleted meanwhile)."""
        jobs: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        for job_id in job_ids:
            while jobs.get(job_id, {}).get("status") not in FINISHED:
                left = deadline - time.monotonic()
                if left <= 0 and job_id in jobs:
                    break
                # Rounded up: a wait of 0 is answered at once, so rounding down would poll
                # as fast as the server answers for the last second.
                hold = min(WAIT_MAX_SECONDS, max(0, math.ceil(left)))
                try:
                    response = self.send("GET", f"/api/jobs/{job_id}/", params={"wait": hold})
                except InferenceHubError as exc:
                    # A server restarting or its database away for a moment must not end a
                    # long wait.
                    if exc.transient and left > 0:
                        time.sleep(min(exc.retry_after_s, left))
                        continue
                    # A job deleted meanwhile, a token revoked: what was seen is still the
                    # caller's, who has sent the files.
                    raise WaitStopped(f"waiting stopped at job {job_id}: {exc}", jobs) from None
                job = response.json()
                if jobs.get(job_id) != job:
                    jobs[job_id] = job
                    if on_progress:
                        on_progress(jobs)
                if job["status"] not in FINISHED and "Retry-After" in response.headers:
                    # Every holding slot of the web process was taken: the answer came at
                    # once, and asking again at once would be polling.
                    left = deadline - time.monotonic()
                    time.sleep(max(0.0, min(retry_after_s(response), left)))
        unfinished = sum(job["status"] not in FINISHED for job in jobs.values())
        if unfinished:
            raise WaitTimeout(
                f"{unfinished} of {len(jobs)} jobs unfinished after {timeout_s:g} s", jobs
            )
        return jobs


def retry_after_s(response: requests.Response) -> float:
    """Retry-After in seconds; NOT_TOLD_WAIT_S without one, or for a date, which this API
    never sends."""
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return NOT_TOLD_WAIT_S
