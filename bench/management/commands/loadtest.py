"""`manage.py loadtest`: real traffic against the running stack (`make run`): slow clients,
open pages and a user with a huge backlog, each beside the light-load figures of the same
run (bench/loadtest.py; docs/performance.md, "Under real traffic")."""

import io
import json
import math
import threading
import time
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from PIL import Image
from rest_framework.authtoken.models import Token

from bench import loadtest
from bench.run import percentiles
from kafka_wire import readback
from kafka_wire.config import lanes_of
from kafka_wire.contract import decode_result, job_id_of_key
from kafka_wire.topics import describe_topics, project_topics
from predictions.models import Batch, Job
from registry.models import ModelVersion
from stack.common import RUN

DATA = Path(__file__).resolve().parents[3] / "tests" / "data"
PARTS = ("front", "backlog", "big", "cancel", "priority")


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


def kafka_drained(routes: list, timeout_s: float = 300) -> None:
    """Wait until the workers have read every request and the bridge every result: after
    that no result for the jobs of a part is still to come."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = describe_topics(project_topics(routes))
        behind = [row for row in rows if row.group is not None and row.lag]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"Kafka not drained after {timeout_s} s: {behind}")
        time.sleep(1)


def per_job_ms(cpu_s: dict[str, float], jobs: int) -> float | None:
    return cpu_s["total"] * 1000 / jobs if cpu_s and jobs else None


def cancelled_stages(job_ids: list[str]) -> dict:
    """Where the cancelled jobs were when cancelled, as their records say (a cancel keeps
    the stage times): still waiting their turn in the database, admitted but not marked
    handed to Kafka, or handed to Kafka."""
    jobs = Job.objects.filter(pk__in=job_ids)
    return {
        "waiting_not_admitted": jobs.filter(admitted_at__isnull=True).count(),
        "admitted_not_submitted": jobs.filter(
            admitted_at__isnull=False, submitted_at__isnull=True
        ).count(),
        "submitted": jobs.filter(submitted_at__isnull=False).count(),
    }


class Command(BaseCommand):
    help = (
        "Load test the running stack: /healthz and a job read under open event streams, "
        "?wait= clients and slow uploads; user B's latency behind user A's backlog and big "
        "uploads; A's throughput with and without half its jobs cancelled mid-stream, and how "
        "many of those were still inferred; a high-priority job's behind low ones; printed and "
        "written as JSON."
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
        parser.add_argument("--cancel-jobs", type=int, default=1000, help="A's jobs per run")
        parser.add_argument("--cancel-per-request", type=int, default=50)
        parser.add_argument("--cancel-threads", type=int, default=4)
        parser.add_argument(
            "--cancel-after",
            type=float,
            default=0.1,
            help="cancel once this share of the jobs has finished",
        )
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

        def behind_backlog(part: str, measure, backlog: list, per_request: int) -> None:
            """A part where one upload waits behind A's backlog, with A's throughput."""
            report[part] = measure(
                users,
                backlog=backlog,
                per_request=per_request,
                image=small,
                light_ms=report["light_ms"]["median"],
                log=self.stdout.write,
            )
            report[part].update(throughput(report[part].pop("a_job_ids")))
            self.stdout.write(f"{part}: {json.dumps(report[part])}")

        if "backlog" in parts:
            behind_backlog("backlog", loadtest.b_under_backlog, [small] * options["backlog"], 100)
        if "big" in parts:
            big = ("big.webp", big_webp(options["big_megapixels"]))
            self.stdout.write(f"big WEBP: {len(big[1]) // 1024} KB, {options['big_megapixels']} MP")
            behind_backlog("big", loadtest.b_under_backlog, [big] * options["big"], 4)

        if "cancel" in parts:
            report["cancel"] = cancel = self.cancel_part(users, small, options)
            self.stdout.write(f"cancel: {json.dumps(cancel)}")
            met = "met" if cancel["target_met"] else "not met"
            self.stdout.write(
                f"cancel: {cancel['inferred']} of {cancel['cancelled']} cancelled jobs still "
                f"inferred ({cancel['inferred_share']:.1%}), target ≤ "
                f"{cancel['target_share']:.0%}: {met}; served {cancel['served_jobs_per_s']:.1f} "
                f"jobs/s against {cancel['without_jobs_per_s']:.1f} without cancelling"
            )

        if "priority" in parts:
            behind_backlog("priority", loadtest.high_behind_low, [small] * options["backlog"], 100)

        out = Path(options["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        self.stdout.write(f"written to {out}")

    def cancel_part(self, users: loadtest.Users, image: tuple[str, bytes], options) -> dict:
        """A's N jobs at saturation, then N more with every other one cancelled job by job
        once the first jobs have finished; what became of the cancelled ones is read back
        from Kafka: the requests the workers were sent and the results they produced."""
        count, per_request = options["cancel_jobs"], options["cancel_per_request"]
        images = [image] * count
        supervisor = RUN / "supervisord.pid"
        cpu_before = loadtest.stack_cpu_seconds(supervisor)
        job_ids, upload_s = loadtest.upload_all(users, images, per_request)
        self.stdout.write(f"cancel: without, A queued {count} jobs in {upload_s:.1f} s")
        without = throughput(job_ids)
        cpu_without = loadtest.cpu_spent(cpu_before, loadtest.stack_cpu_seconds(supervisor))
        self.stdout.write(f"cancel: without, {json.dumps(without)}")

        routes = [version.route for version in ModelVersion.objects.select_related("model")]
        # Every lane's topic: a request is in whichever its job's priority names.
        lanes = [lanes_of(settings.KAFKA_REQUESTS_TOPIC, settings.KAFKA_WORKER_GROUP)]
        lanes += [route.lanes() for route in routes]
        requests_topics = {topic for lane in lanes for topic, _ in lane.values()}
        start = readback.end_offsets([*requests_topics, settings.KAFKA_RESULTS_TOPIC])
        cpu_before = loadtest.stack_cpu_seconds(supervisor)
        report = self.cancel_mid_stream(users, images, per_request, options)
        job_ids = report.pop("job_ids")
        cancelled_at = report.pop("cancelled_at")
        everything = throughput(job_ids)
        cpu_with = loadtest.cpu_spent(cpu_before, loadtest.stack_cpu_seconds(supervisor))
        served = list(
            Job.objects.filter(pk__in=job_ids)
            .exclude(status=Job.Status.CANCELLED)
            .values_list("pk", flat=True)
        )
        rest = throughput([str(pk) for pk in served])
        kafka_drained(routes)
        sent: set[str] = set()
        results = []
        for topic, key, value in readback.read_since(start):
            if topic in requests_topics:
                sent.add(job_id_of_key(key) or "")
            elif value is not None:
                results.append(decode_result(value))
        summary = loadtest.cancellation_summary(cancelled_at, sent, results)
        return {
            "jobs": count,
            "without_jobs_per_s": without.get("a_jobs_per_s"),
            "without_failed": without.get("a_failed"),
            **report,
            "served": len(served),
            "served_jobs_per_s": rest.get("a_jobs_per_s"),
            "served_failed": rest.get("a_failed"),
            "served_ratio_to_without": rest.get("a_jobs_per_s", 0) / without["a_jobs_per_s"],
            "all_jobs_per_s": everything.get("a_jobs_per_s"),
            "requests_in_kafka": len(sent & set(job_ids)),
            "results_read": len(results),
            "cancelled_stages": cancelled_stages(list(cancelled_at)),
            **summary,
            # The stack's CPU seconds, by process, for each run (empty: not this machine's).
            "cpu_s_without": cpu_without,
            "cpu_s_with": cpu_with,
            "cpu_ms_per_served_job_without": per_job_ms(cpu_without, count),
            "cpu_ms_per_served_job_with": per_job_ms(cpu_with, len(served)),
        }

    def cancel_mid_stream(
        self, users: loadtest.Users, images: list[tuple[str, bytes]], per_request: int, options
    ) -> dict:
        """A uploads the images from a thread of its own; once options["cancel_after"] of
        them have finished, every other job (the 2nd, 4th, ... uploaded) is cancelled, each
        by its own request; those uploaded later, as they come."""
        count = len(images)
        uploaded: list[str] = []
        upload_done = threading.Event()
        upload_errors: list[Exception] = []

        def upload() -> None:
            a = loadtest.session(users.token_a)
            try:
                for start in range(0, count, per_request):
                    chunk = images[start : start + per_request]
                    uploaded.extend(loadtest.upload(a, users.base_url, chunk))
            except Exception as error:
                upload_errors.append(error)
            finally:
                upload_done.set()

        uploader = threading.Thread(target=upload, name="A uploads", daemon=True)
        started = time.monotonic()
        uploader.start()
        threshold = math.ceil(options["cancel_after"] * count)
        while True:
            done = upload_done.is_set()
            ids = list(uploaded)
            finished = Job.objects.filter(pk__in=ids, status__in=Job.FINISHED).count()
            if finished >= threshold or (done and finished == len(ids)):
                break
            time.sleep(0.2)
        uploaded_then = len(ids)
        self.stdout.write(
            f"cancel: {finished} of {count} finished, {uploaded_then} uploaded after "
            f"{time.monotonic() - started:.1f} s; cancelling every other job"
        )
        answers: list[loadtest.CancelAnswer] = []
        cancel_started = time.monotonic()
        cancelling_s = 0.0
        next_index = 1
        while True:
            done = upload_done.is_set()
            ids = list(uploaded)
            chosen = ids[next_index::2]
            if chosen:
                round_started = time.monotonic()
                answers += loadtest.cancel_each(users, chosen, options["cancel_threads"])
                cancelling_s += time.monotonic() - round_started
                next_index += 2 * len(chosen)
            elif done:
                break
            else:
                time.sleep(0.1)
        cancel_s = time.monotonic() - cancel_started
        uploader.join()
        if upload_errors:
            raise CommandError(f"A's upload failed: {upload_errors[0]}")
        statuses = Counter(answer.status for answer in answers)
        return {
            "job_ids": ids,
            "cancelled_at": {a.job_id: a.answered_at for a in answers if a.status == 200},
            "finished_when_cancelling_began": finished,
            "uploaded_when_cancelling_began": uploaded_then,
            "cancel_requests": len(answers),
            "cancel_answers": {str(status): n for status, n in sorted(statuses.items())},
            "cancel_s": cancel_s,
            "cancel_requests_busy_s": cancelling_s,
            "cancel_ms": percentiles([answer.ms for answer in answers]),
        }
