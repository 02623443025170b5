"""`manage.py benchmark`: measure the pipeline against the model's ceiling, the seed's
design and the peer frameworks, on this machine, in one run (see docs/performance.md)."""

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bench.peer_runs import PEER_PARTS
from bench.run import CONFIGS, Options

BENCH_SETTINGS = "bench.settings"
PARTS = ("ceiling", "runtimes", *CONFIGS, *PEER_PARTS, "decode")


class Command(BaseCommand):
    help = (
        "Benchmark the pipeline (ceiling, saturation, latency, seed-style baseline, "
        "plumbing ceiling, the peers (Ray Serve, BentoML, MLServer), decoding paths); "
        "writes bench-results/<timestamp>/."
    )

    def add_arguments(self, parser):
        defaults = Options()
        parser.add_argument("--images", type=int, default=defaults.images)
        parser.add_argument("--clients", type=int, default=defaults.clients)
        parser.add_argument("--latency-images", type=int, default=defaults.latency_images)
        parser.add_argument("--workers", type=int, default=defaults.workers)
        parser.add_argument(
            "--threads", type=int, default=defaults.threads, help="0: TensorFlow's default"
        )
        parser.add_argument("--max-batch-size", type=int, default=settings.WORKER_MAX_BATCH_SIZE)
        parser.add_argument(
            "--batch-delay-ms", type=int, default=settings.WORKER_MAX_BATCH_DELAY_MS
        )
        parser.add_argument("--celery-concurrency", type=int, default=defaults.celery_concurrency)
        parser.add_argument("--web-workers", type=int, default=defaults.web_workers)
        parser.add_argument("--ceiling-seconds", type=float, default=defaults.ceiling_seconds)
        parser.add_argument(
            "--only", default=",".join(PARTS), help=f"comma list of parts: {', '.join(PARTS)}"
        )
        parser.add_argument("--out-dir", default=str(defaults.out_dir))
        parser.add_argument(
            "--no-peer-install",
            action="store_true",
            help="skip a peer whose venv (.stack/peers/<name>) is not made yet, saying so, "
            "instead of making it",
        )
        parser.add_argument(
            "--profile",
            action="store_true",
            help="sample every pipeline process with py-spy during the saturation runs",
        )

    def handle(self, *args, **options):
        if settings.SETTINGS_MODULE != BENCH_SETTINGS:
            # Its own topics, queue and database come with the benchmark settings: rerun
            # under them rather than touch the database and topics of these settings.
            env = {**os.environ, "DJANGO_SETTINGS_MODULE": BENCH_SETTINGS}
            argv = [sys.executable, sys.argv[0], "benchmark", *sys.argv[2:]]
            code = subprocess.run(argv, env=env).returncode
            if code:
                raise CommandError(f"the benchmark failed (exit {code})")
            return
        parts = tuple(part.strip() for part in options["only"].split(",") if part.strip())
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise CommandError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
        from bench.run import run_benchmark

        out = run_benchmark(
            Options(
                images=options["images"],
                clients=options["clients"],
                latency_images=options["latency_images"],
                workers=options["workers"],
                threads=options["threads"],
                max_batch_size=options["max_batch_size"],
                batch_delay_ms=options["batch_delay_ms"],
                celery_concurrency=options["celery_concurrency"],
                web_workers=options["web_workers"],
                ceiling_seconds=options["ceiling_seconds"],
                parts=parts,
                profile=options["profile"],
                peer_install=not options["no_peer_install"],
                out_dir=Path(options["out_dir"]),
            ),
            log=self.stdout.write,
        )
        self.stdout.write((out / "results.md").read_text())
        self.stdout.write(f"results in {out}")
