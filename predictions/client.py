"""A small Python client of the REST API, for scripts; `manage.py submit` is built on it.

    client = InferenceHubClient("http://127.0.0.1:8000", token)
    uploaded = client.upload([Path("cat.jpg")], top_k=3)
    jobs = client.wait([job["id"] for job in uploaded if "id" in job])

It needs only `requests`, not Django.
"""

import contextlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REQUEST_TIMEOUT_S = 120.0
IMAGES_PER_REQUEST = 8
# An upload whose answer was lost, or that met a briefly unavailable server, is sent again
# with the same Idempotency-Key, so it never makes its jobs twice.
UPLOAD_ATTEMPTS = 4
RETRY_BACKOFF_S = 0.5
UNAVAILABLE = (502, 503, 504)
FINISHED = ("succeeded", "failed")


class InferenceHubError(Exception):
    """The server refused a request (status is its HTTP code), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(InferenceHubError):
    pass


class InferenceHubClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.headers = {"Authorization": f"Token {token}"} if token else {}

    def request(self, method: str, path: str, *, headers: dict | None = None, **kwargs) -> dict:
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
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise InferenceHubError(f"HTTP {response.status_code}: {message}", response.status_code)
        return response.json()

    def create_batch(self) -> str:
        return self.request("POST", "/api/batches/")["id"]

    def upload_files(
        self, paths: list[Path], *, top_k: int = 5, batch: str | None = None
    ) -> list[dict]:
        """Upload images in one request, all or nothing; returns their jobs in order.

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
                retry = (
                    isinstance(exc, ServerUnreachable)
                    or exc.status in UNAVAILABLE
                    or (exc.status == 409 and attempt > 1)
                )
                if not retry or attempt == attempts:
                    raise
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            attempt += 1

    def upload(
        self,
        paths: list[Path],
        *,
        top_k: int = 5,
        batch: str | None = None,
        concurrency: int = 4,
        per_request: int = IMAGES_PER_REQUEST,
    ) -> list[dict]:
        """Upload the files, per_request in each request: several images per request cost
        the server far less per image than one each (docs/performance.md). A refused
        request stored nothing, so its files are sent again one by one and only a bad file
        is refused.

        Returns, in the order of paths, each job with "file" added, or for a refused file
        {"file": ..., "status": "rejected", "error": ...}. Raises ServerUnreachable.
        """

        def send(chunk: list[Path]) -> list[dict]:
            try:
                jobs = self.upload_files(chunk, top_k=top_k, batch=batch)
            except ServerUnreachable:
                raise
            except (InferenceHubError, OSError) as exc:
                if len(chunk) > 1:
                    return [job for path in chunk for job in send([path])]
                return [{"file": str(chunk[0]), "status": "rejected", "error": str(exc)}]
            return [{"file": str(path), **job} for path, job in zip(chunk, jobs, strict=True)]

        chunks = [paths[start : start + per_request] for start in range(0, len(paths), per_request)]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return [job for jobs in pool.map(send, chunks) for job in jobs]

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/api/jobs/{job_id}/")

    def wait(
        self,
        job_ids: list[str],
        *,
        timeout_s: float = 600.0,
        poll_interval_s: float = 0.5,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, dict]:
        """Poll until every job has finished; returns each job by id.

        on_progress(finished, total) is called after every round. Raises InferenceHubError
        when some job has not finished within timeout_s."""
        jobs: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            for job_id in job_ids:
                if jobs.get(job_id, {}).get("status") not in FINISHED:
                    jobs[job_id] = self.job(job_id)
            finished = sum(job["status"] in FINISHED for job in jobs.values())
            if on_progress:
                on_progress(finished, len(job_ids))
            if finished == len(job_ids):
                return jobs
            if time.monotonic() > deadline:
                raise InferenceHubError(
                    f"{len(job_ids) - finished} of {len(job_ids)} jobs unfinished "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(poll_interval_s)
