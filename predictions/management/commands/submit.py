import json
import os
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from predictions.client import IMAGES_PER_REQUEST, InferenceHubClient, InferenceHubError

# Folders are searched for these; files named on the command line are sent whatever
# their name, and the server judges them by their bytes.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(paths: list[str]) -> list[Path]:
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"{raw}: no such file or folder")
    if not found:
        raise CommandError("no image files found in " + ", ".join(paths))
    return found


def show_progress(finished: int, total: int) -> None:
    # One self-updating line on stderr, so stdout stays clean for the table or JSON.
    sys.stderr.write(f"\r{finished}/{total} finished")
    sys.stderr.flush()
    if finished == total:
        sys.stderr.write("\n")


class Command(BaseCommand):
    help = (
        "Upload image files or folders (recursively) through the REST API, wait for the "
        "results and print them."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--server", default="http://127.0.0.1:8000")
        parser.add_argument(
            "--token", default=os.environ.get("INFERENCEHUB_TOKEN"), help="or INFERENCEHUB_TOKEN"
        )
        parser.add_argument("--top-k", type=int, default=5)
        parser.add_argument("--batch", help="a batch id, or 'new' to create one")
        parser.add_argument("--concurrency", type=int, default=4, help="uploads at once")
        parser.add_argument(
            "--per-request", type=int, default=IMAGES_PER_REQUEST, help="images per upload"
        )
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
        parser.add_argument("--json", action="store_true", help="one JSON line per file")

    def handle(
        self,
        *args,
        paths,
        server,
        token,
        top_k,
        batch,
        concurrency,
        per_request,
        timeout,
        **options,
    ):
        if not token:
            raise CommandError("an API token is needed: --token or INFERENCEHUB_TOKEN")
        if not 1 <= top_k <= 1000:
            raise CommandError(f"--top-k must be between 1 and 1000, got {top_k}")
        if concurrency < 1:
            raise CommandError(f"--concurrency must be 1 or more, got {concurrency}")
        if per_request < 1:
            raise CommandError(f"--per-request must be 1 or more, got {per_request}")
        files = image_files(paths)
        client = InferenceHubClient(server, token)
        try:
            if batch == "new":
                batch = client.create_batch()
                self.stderr.write(f"batch {batch}")
            uploaded = client.upload(
                files, top_k=top_k, batch=batch, concurrency=concurrency, per_request=per_request
            )
            job_ids = [job["id"] for job in uploaded if "id" in job]
            finished = client.wait(job_ids, timeout_s=timeout, on_progress=show_progress)
        except InferenceHubError as exc:
            raise CommandError(str(exc)) from None
        results = [
            {"file": job["file"], **finished[job["id"]]} if "id" in job else job for job in uploaded
        ]
        if options["json"]:
            for result in results:
                self.stdout.write(json.dumps(result))
        else:
            self.print_table(results)

    def print_table(self, results: list[dict]) -> None:
        rows = [("file", "status", "top-1 label", "score")]
        for result in results:
            best = (result.get("predictions") or [{}])[0]
            rows.append(
                (
                    result["file"],
                    result["status"],
                    best.get("label") or result.get("error") or "",
                    f"{best['score']:.4f}" if "score" in best else "",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[3]]).rstrip())
