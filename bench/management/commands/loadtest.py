"""`manage.py loadtest`: real traffic against the running stack (`make run`): slow clients,
open pages and a user with a huge backlog, each beside the light-load figures of the same
run (bench/loadtest.py; docs/performance.md, "Under real traffic")."""

import io
import json
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from PIL import Image
from rest_framework.authtoken.models import Token

from bench import loadtest
from predictions.models import Batch, Job

DATA = Path(__file__).resolve().parents[3] / "tests" / "data"
PARTS = ("front", "backlog", "big")


def token_for(username: str) -> str:
    user, _ = get_user_model().objects.get_or_create(username=username)
    return Token.objects.get_or_create(user=user)[0].key


def big_webp(megapixels: float) -> bytes:
    """A photo scaled up to the given size: large, and compressing as photos do."""
    photo = Image.open(DATA / "bolete.jpg").convert("RGB")
    scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
    big = photo.resize((int(photo.width * scale), int(photo.height * scale)))
    out = io.BytesIO()
    big.save(out, "WEBP", quality=85)
    return out.getvalue()


def throughput(job_ids: list[str], timeout_s: float = 1800) -> dict:
    """A's jobs once all have finished: how many per second the stack stored, from the first
    upload to the last result (its saturation throughput, front door included)."""
    deadline = time.monotonic() + timeout_s
    jobs = Job.objects.filter(pk__in=job_ids)
    while jobs.exclude(status__in=Job.FINISHED).exists():
        if time.monotonic() > deadline:
            raise CommandError(f"A's jobs unfinished after {timeout_s} s")
        time.sleep(1)
    if not job_ids:
        return {}
    first = min(jobs.values_list("created_at", flat=True))
    last = max(jobs.values_list("finished_at", flat=True))
    failed = jobs.filter(status=Job.Status.FAILED).count()
    return {"a_jobs_per_s": len(job_ids) / (last - first).total_seconds(), "a_failed": failed}


class Command(BaseCommand):
    help = (
        "Load test the running stack: /healthz and a job read under open event streams, "
        "?wait= clients and slow uploads; user B's latency behind user A's backlog and big "
        "uploads; printed and written as JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--only", default=",".join(PARTS), help=", ".join(PARTS))
        parser.add_argument("--streams", type=int, default=200)
        parser.add_argument("--waits", type=int, default=50)
        parser.add_argument("--slow-uploads", type=int, default=20)
        parser.add_argument("--slow-bytes-per-s", type=int, default=20_000)
        parser.add_argument("--seconds", type=float, default=20)
        parser.add_argument("--backlog", type=int, default=2000)
        parser.add_argument("--big", type=int, default=40)
        parser.add_argument("--big-megapixels", type=float, default=12)
        parser.add_argument("--light", type=int, default=5, help="B's light-load uploads")
        parser.add_argument("--out", default="bench-results/loadtest.json")

    def handle(self, *args, **options):
        parts = [p.strip() for p in options["only"].split(",") if p.strip()]
        if unknown := set(parts) - set(PARTS):
            raise CommandError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
        users = loadtest.Users(
            options["url"].rstrip("/"), token_for("loadtest-a"), token_for("loadtest-b")
        )
        photo = ("fox.png", (DATA / "fox.png").read_bytes())
        small = ("bolete.jpg", (DATA / "bolete.jpg").read_bytes())
        report: dict = {"url": users.base_url, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

        # Light load means no earlier run's backlog still in the pipeline.
        throughput(list(Job.objects.exclude(status__in=Job.FINISHED).values_list("pk", flat=True)))
        light = loadtest.light_load_ms(users, small, options["light"])
        report["light_ms"] = {"each": light, "median": loadtest.median(light)}
        self.stdout.write(f"B alone: median {report['light_ms']['median']:.0f} ms")

        if "front" in parts:
            owner_a = get_user_model().objects.get(username="loadtest-a")
            batch = Batch.objects.create(owner=owner_a)
            # Never finished while the test runs: every ?wait= on it is held to the end.
            held = Job.objects.create(
                owner=owner_a,
                batch=batch,
                seq=0,
                status=Job.Status.SUBMITTED,
                image="",
                image_format="PNG",
                image_width=1,
                image_height=1,
                image_bytes=1,
            )
            finished = Job.objects.filter(owner__username="loadtest-b").latest("created_at")
            try:
                report["front"] = loadtest.front_door(
                    users,
                    batch_id=str(batch.pk),
                    unfinished_job_id=str(held.pk),
                    finished_job_id=str(finished.pk),
                    image=photo,
                    streams=options["streams"],
                    waits=options["waits"],
                    slow_uploads=options["slow_uploads"],
                    slow_bytes_per_s=options["slow_bytes_per_s"],
                    seconds=options["seconds"],
                    log=self.stdout.write,
                )
            finally:
                batch.delete()
            self.stdout.write(f"front: {json.dumps(report['front'])}")

        light_median = report["light_ms"]["median"]
        if "backlog" in parts:
            report["backlog"] = loadtest.b_under_backlog(
                users,
                backlog=[small] * options["backlog"],
                per_request=100,
                image=small,
                light_ms=light_median,
                log=self.stdout.write,
            )
            report["backlog"].update(throughput(report["backlog"].pop("a_job_ids")))
            self.stdout.write(f"backlog: {json.dumps(report['backlog'])}")
        if "big" in parts:
            big = ("big.webp", big_webp(options["big_megapixels"]))
            self.stdout.write(f"big WEBP: {len(big[1]) // 1024} KB, {options['big_megapixels']} MP")
            report["big"] = loadtest.b_under_backlog(
                users,
                backlog=[big] * options["big"],
                per_request=4,
                image=small,
                light_ms=light_median,
                log=self.stdout.write,
            )
            report["big"].update(throughput(report["big"].pop("a_job_ids")))
            self.stdout.write(f"big: {json.dumps(report['big'])}")

        out = Path(options["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        self.stdout.write(f"written to {out}")
