import json
import os
import sys
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from common.lanes import LANES
from common.limits import TOP_K_DEFAULT, top_k_problem
from predictions.client import (
    FINISHED,
    IMAGES_PER_REQUEST,
    InferenceHubClient,
    InferenceHubError,
    WaitStopped,
)

# Folders are searched for these; files named on the command line are sent whatever
# their name, and the server judges them by their bytes.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
# Exit statuses besides 0: some file was not classified; nothing could be sent at all.
SOME_FAILED, NOTHING_SENT = 1, 2
# As a shell reports a process ended by SIGINT.
INTERRUPTED = 130
SUMMARY_ORDER = [
    "succeeded",
    "failed",
    "cancelled",
    "expired",
    "rejected",
    "queued",
    "preprocessed",
    "submitted",
]


def image_files(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """The image files to send, and the files of the folders skipped as not images."""
    found, skipped = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                (found if file.suffix.lower() in IMAGE_SUFFIXES else skipped).append(file)
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"{raw}: no such file or folder")
    if not found:
        raise CommandError("no image files found in " + ", ".join(paths))
    return found, skipped


class FinishedRate(ProgressColumn):
    def render(self, task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:.1f} files/s")


class ProgressDisplay:
    """One self-updating line on stderr, so stdout stays clean for the table or JSON:
    files uploaded, finished and failed, the finishing rate and the time elapsed."""

    def __init__(self, total: int, stream) -> None:
        self.progress = Progress(
            TextColumn("uploaded {task.fields[uploaded]}/{task.total}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} finished, {task.fields[failed]} failed"),
            FinishedRate(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self.task = self.progress.add_task("submit", total=total, uploaded=0, failed=0)
        self.lock = threading.Lock()
        self.uploaded = self.rejected = 0

    def __enter__(self) -> "ProgressDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def on_uploaded(self, results: list[dict]) -> None:
        with self.lock:
            self.uploaded += sum("id" in result for result in results)
            self.rejected += sum("id" not in result for result in results)
            self.progress.update(
                self.task, uploaded=self.uploaded, completed=self.rejected, failed=self.rejected
            )

    def on_progress(self, jobs: dict[str, dict]) -> None:
        finished = sum(job["status"] in FINISHED for job in jobs.values())
        failed = sum(
            job["status"] != "succeeded" for job in jobs.values() if job["status"] in FINISHED
        )
        self.progress.update(
            self.task, completed=self.rejected + finished, failed=self.rejected + failed
        )


class Command(BaseCommand):
    help = (
        "Upload image files or folders (recursively) through the REST API, wait for the "
        "results and print them. Exits with 1 when some file was not classified, and 2 when "
        "nothing could be sent (a refused token or batch, a server that cannot be reached)."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument(
            "--server", default="http://127.0.0.1:8000", help="(default: %(default)s)"
        )
        parser.add_argument(
            "--token", default=os.environ.get("INFERENCEHUB_TOKEN"), help="or INFERENCEHUB_TOKEN"
        )
        parser.add_argument(
            "--top-k",
            type=int,
            default=TOP_K_DEFAULT,
            help="labels per image (default: %(default)s)",
        )
        parser.add_argument("--batch", help="a batch id, or 'new' to create one (default: none)")
        parser.add_argument(
            "--model",
            metavar="NAME[:VERSION]",
            help="a registered model (default: the server's default model)",
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="uploads at once (default: %(default)s)"
        )
        parser.add_argument(
            "--per-request",
            type=int,
            default=IMAGES_PER_REQUEST,
            help="images per upload (default: %(default)s)",
        )
        parser.add_argument(
            "--timeout", type=float, default=600.0, help="seconds to wait (default: %(default)s)"
        )
        parser.add_argument(
            "--timeout-per-job",
            type=int,
            default=None,
            metavar="SECONDS",
            help="a job not inferred within this ends expired (default: the model's, if any)",
        )
        parser.add_argument(
            "--priority",
            choices=LANES,
            default=None,
            help="the jobs' lane: workers take higher lanes first (default: the batch's, "
            "else normal)",
        )
        parser.add_argument(
            "--cancel-on-interrupt",
            action="store_true",
            help="on Ctrl-C, cancel the jobs sent that have not finished (without --batch, "
            "the run's uploads go into a new batch, cancelled in one request)",
        )
        parser.add_argument("--json", action="store_true", help="one JSON line per file")

    def handle(
        self,
        *args,
        paths,
        server,
        token,
        top_k,
        batch,
        model,
        concurrency,
        per_request,
        timeout,
        timeout_per_job,
        priority,
        cancel_on_interrupt,
        **options,
    ):
        if not token:
            raise CommandError(
                "an API token is needed: --token or INFERENCEHUB_TOKEN", returncode=NOTHING_SENT
            )
        if problem := top_k_problem(top_k, name="--top-k"):
            raise CommandError(problem)
        if concurrency < 1:
            raise CommandError(f"--concurrency must be 1 or more, got {concurrency}")
        if per_request < 1:
            raise CommandError(f"--per-request must be 1 or more, got {per_request}")
        if timeout_per_job is not None and timeout_per_job < 1:
            raise CommandError(f"--timeout-per-job must be 1 or more, got {timeout_per_job}")
        files, skipped = image_files(paths)
        client = InferenceHubClient(server, token)
        unfinished = None
        # Every job id the server answered with, as the answers come: what an interrupt
        # cancels.
        sent: list[str] = []
        # A batch of this run's own (asked for, or made so that an interrupt can cancel all
        # it sent in one request) is cancelled whole; a batch named holds others' jobs too.
        own_batch = batch == "new" or (batch is None and cancel_on_interrupt)
        try:
            if own_batch:
                batch = client.create_batch()
            with ProgressDisplay(len(files), sys.stderr) as display:

                def on_uploaded(results: list[dict]) -> None:
                    sent.extend(job["id"] for job in results if "id" in job)
                    display.on_uploaded(results)

                uploaded = client.upload(
                    files,
                    top_k=top_k,
                    batch=batch,
                    model=model,
                    timeout_s=timeout_per_job,
                    priority=priority,
                    concurrency=concurrency,
                    per_request=per_request,
                    on_uploaded=on_uploaded,
                )
                job_ids = [job["id"] for job in uploaded if "id" in job]
                try:
                    finished = client.wait(
                        job_ids, timeout_s=timeout, on_progress=display.on_progress
                    )
                except WaitStopped as exc:  # out of time, or a job deleted meanwhile
                    finished, unfinished = exc.jobs, str(exc)
                elapsed = display.progress.tasks[0].elapsed or 0.0
        except InferenceHubError as exc:
            # Only the batch's creation or a server that cannot be reached end up here.
            raise CommandError(str(exc), returncode=NOTHING_SENT) from None
        except KeyboardInterrupt:
            if not cancel_on_interrupt:
                raise
            self.stderr.write(f"interrupted: cancelling the {len(sent)} job(s) sent")
            try:
                if own_batch:
                    cancelled = client.cancel_batch(batch)
                else:
                    cancelled = client.cancel(sent, concurrency=concurrency)
            except InferenceHubError as exc:
                raise CommandError(f"cancelling failed: {exc}", returncode=INTERRUPTED) from None
            where = f"; the batch: {server.rstrip('/')}/api/batches/{batch}/" if batch else ""
            raise CommandError(
                f"interrupted: {cancelled} job(s) cancelled, {len(sent) - cancelled} had "
                f"finished{where}",
                returncode=INTERRUPTED,
            ) from None
        results = [
            # A job the wait never got an answer for is shown as its upload answered.
            {"file": job["file"], **finished.get(job["id"], job)} if "id" in job else job
            for job in uploaded
        ]
        results += [
            {"file": str(path), "status": "skipped", "error": "not an image file name"}
            for path in skipped
        ]
        if options["json"]:
            for result in results:
                self.stdout.write(json.dumps(result))
        else:
            self.print_table(results)
        self.stderr.write(summary(results, elapsed))
        batches = {result["batch"] for result in results if result.get("batch")}
        for batch_id in sorted(batches):
            self.stderr.write(f"batch page: {client.server}/batches/{batch_id}/")
        if unfinished:
            raise CommandError(unfinished, returncode=SOME_FAILED)
        if not job_ids:
            raise CommandError("no file could be sent", returncode=NOTHING_SENT)
        not_classified = sum(r["status"] not in ("succeeded", "skipped") for r in results)
        if not_classified:
            raise CommandError(
                f"{not_classified} of {len(files)} files not classified", returncode=SOME_FAILED
            )

    def print_table(self, results: list[dict]) -> None:
        rows = [("file", "job id", "status", "top-1 label", "score", "note")]
        for result in results:
            best = (result.get("predictions") or [{}])[0]
            note = "random weights" if result.get("random_weights") else ""
            rows.append(
                (
                    result["file"],
                    result.get("id", "–"),
                    result["status"],
                    best.get("label", "–"),
                    f"{best['score']:.4f}" if "score" in best else "–",
                    result.get("error") or note,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(5)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[5]]).rstrip())


def summary(results: list[dict], elapsed_s: float) -> str:
    """E.g. "3 succeeded, 1 rejected, 2 skipped in 4.2 s (0.7 files/s)"."""
    counts: dict[str, int] = {}
    for result in sorted(results, key=lambda r: status_rank(r["status"])):
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    sent = sum(n for status, n in counts.items() if status != "skipped")
    rate = sent / elapsed_s if elapsed_s else 0.0
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{parts} in {elapsed_s:.1f} s ({rate:.1f} files/s)"


def status_rank(status: str) -> int:
    return SUMMARY_ORDER.index(status) if status in SUMMARY_ORDER else len(SUMMARY_ORDER)
