"""One benchmark run: every figure measured side by side on this machine, in one go.

Runs inside `manage.py benchmark` with bench.settings, connected to its own
database. It starts the processes each configuration needs (web, Celery, inference workers,
bridge; or a peer framework) with their own Kafka topics, measures, and stops them.

Over 400 lines because it is the run's script from start to end: the configurations, the
order of the parts and each part's measuring. The measuring that stands alone lives beside
it (ceiling.py, runtimes.py, decode.py, peers.py, peer_runs.py, report.py); the pipeline
runs are the next to move out.
"""

import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection
from django.test.utils import override_settings

from bench.ceiling import package_ceilings, single_and_batched
from bench.decode import measure_decoding
from bench.figures import load_average, percentiles, wait_for_http
from bench.images import make_images
from bench.otlp_receiver import OtlpReceiver
from bench.peer_runs import PEER_PARTS, PEERS, PeerSettings, ready_peer, run_peer
from bench.peers import PeerUnavailable, peer_python
from bench.runtimes import (
    export_onnx_packages,
    export_packages,
    make_run_choice,
    measure_runtimes,
)
from common.images import prepare_for_model
from kafka_wire.config import kafka_names
from kafka_wire.topics import ensure_topics
from predictions.models import Job
from serving.runtimes.openvino import cpu_flags
from stack import processes
from stack.harness import (
    PYTHON,
    REPO,
    ManagedProcess,
    child_env,
    database_url,
    free_port,
    unique_celery_hostname,
)
from stack.services import running_pid

STAGES = (
    ("queued", "created_at", "preprocessed_at"),
    ("to Kafka", "preprocessed_at", "submitted_at"),
    ("inference", "submitted_at", "inferred_at"),
    ("storing", "inferred_at", "finished_at"),
)


@dataclass
class Options:
    images: int = 600
    clients: int = 8
    latency_images: int = 50
    workers: int = 2
    threads: int = 0  # TensorFlow intra-op threads per worker; 0 lets TensorFlow choose
    max_batch_size: int = 32
    batch_delay_ms: int = 5
    celery_concurrency: int = 2
    web_workers: int | None = None  # gunicorn processes; None: gunicorn.conf.py's default
    ceiling_seconds: float = 15.0
    profile: bool = False  # py-spy every pipeline process during the saturation run
    parts: tuple[str, ...] = (
        "ceiling",
        "runtimes",
        "pipeline",
        "pipeline-multi",
        "seed",
        "plumbing",
        "plumbing-multi",
        "plumbing-small",
        "pipeline-multi-package",
        "pipeline-multi-package-traced",
        "pipeline-multi-package-sampled",
        "pipeline-multi-package-again",
        "pipeline-multi-package-2",
        "pipeline-package",
        *PEER_PARTS,
        "decode",
    )
    out_dir: Path = REPO / "bench-results"
    # The model package make run would serve, exported by the run (bench/runtimes.py).
    package: str = ""
    # Make a peer's venv (bench/peers.py) when it is missing; else skip the peer, saying so.
    peer_install: bool = True


@dataclass
class PipelineConfig:
    name: str
    title: str
    model: str = "resnet50"
    # Modules the Celery worker also imports: bench.seed_celery sends the seed's float32 requests.
    celery_include: tuple[str, ...] = ()
    max_batch_size: int | None = None  # None: Options.max_batch_size
    images_per_request: int = 1
    package: bool = False  # serve Options.package instead of TensorFlow fp32
    workers: int | None = None  # inference worker processes; None: Options.workers
    # OPENVINO_PERFORMANCE_HINT of the workers serving a package.
    openvino_hint: str = "auto"
    # Only the benchmark's images of this size (bench.images.MEGAPIXELS); None: all of them.
    megapixels: float | None = None
    # Celery, the workers and the bridge export spans (OTLP) to a receiver in this process,
    # of this share of the jobs (1.0: every span); the web, shared by every row, does not.
    traced: float = 0.0


CONFIGS = {
    "pipeline": PipelineConfig("pipeline", "pipeline (production settings)"),
    "pipeline-multi": PipelineConfig(
        "pipeline-multi", "pipeline, 8 images per upload", images_per_request=8
    ),
    "seed": PipelineConfig(
        "seed",
        "seed-style baseline (batch 1, float32)",
        celery_include=("bench.seed_celery",),
        max_batch_size=1,
    ),
    "plumbing": PipelineConfig("plumbing", "plumbing ceiling (instant model)", model="instant"),
    "plumbing-multi": PipelineConfig(
        "plumbing-multi",
        "plumbing ceiling, 8 images per upload",
        model="instant",
        images_per_request=8,
    ),
    # What the plumbing costs when decoding is cheap: small images, as a client that
    # reduces its photos before uploading sends them.
    "plumbing-small": PipelineConfig(
        "plumbing-small",
        "plumbing ceiling, 8 images per upload, 0.3 MP",
        model="instant",
        images_per_request=8,
        megapixels=0.3,
    ),
    # As make run serves its package: one worker process, OpenVINO's throughput streams.
    "pipeline-multi-package": PipelineConfig(
        "pipeline-multi-package",
        "pipeline, 8 images per upload, make run's model package (1 worker, throughput)",
        images_per_request=8,
        package=True,
        workers=1,
    ),
    # What tracing costs (issue 26): the row above with every span exported, and with one
    # job in ten traced (the standard sampler), as a busy deployment would.
    "pipeline-multi-package-traced": PipelineConfig(
        "pipeline-multi-package-traced",
        "pipeline, 8 images per upload, make run's model package, traced",
        images_per_request=8,
        package=True,
        workers=1,
        traced=1.0,
    ),
    "pipeline-multi-package-sampled": PipelineConfig(
        "pipeline-multi-package-sampled",
        "pipeline, 8 images per upload, make run's model package, 10 % of jobs traced",
        images_per_request=8,
        package=True,
        workers=1,
        traced=0.1,
    ),
    # The untraced row once more, after the traced ones: the two untraced rows' difference
    # is the run-to-run noise that tracing's cost is compared with.
    "pipeline-multi-package-again": PipelineConfig(
        "pipeline-multi-package-again",
        "pipeline, 8 images per upload, make run's model package, again",
        images_per_request=8,
        package=True,
        workers=1,
    ),
    # As it did before issue 27, for the before/after in one run.
    "pipeline-multi-package-2": PipelineConfig(
        "pipeline-multi-package-2",
        "pipeline, 8 images per upload, make run's model package (2 workers, latency)",
        images_per_request=8,
        package=True,
        workers=2,
        openvino_hint="latency",
    ),
    # One image per upload, as the peers' one-image rows get them: the same images per
    # request on both sides of the comparison.
    "pipeline-package": PipelineConfig(
        "pipeline-package",
        "pipeline, make run's model package (1 worker, throughput)",
        package=True,
        workers=1,
    ),
}
# Parts that need the model packages exported at the start of the run.
PACKAGE_PARTS = (
    "runtimes",
    "pipeline-multi-package",
    "pipeline-multi-package-traced",
    "pipeline-multi-package-sampled",
    "pipeline-multi-package-again",
    "pipeline-multi-package-2",
    "pipeline-package",
    *PEER_PARTS,
)


@dataclass
class Results:
    started_at: str
    machine: dict
    options: dict
    ceiling: dict = field(default_factory=dict)
    packages: dict = field(default_factory=dict)
    runtimes: dict = field(default_factory=dict)
    # make run's package's ceiling in each way of running it (bench.ceiling.package_ceilings).
    ceilings: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=dict)


def run_benchmark(options: Options, log=print) -> Path:
    """Run every part of the benchmark and write the results; returns the results folder."""
    from bench.report import write_report

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = options.out_dir / stamp
    out.mkdir(parents=True, exist_ok=True)
    results = Results(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    )
    images = make_images()
    log(f"benchmark {settings.BENCH_RUN_ID}: results in {out}")
    if "ceiling" in options.parts:
        log("ceiling: the model's own predict throughput ...")
        results.ceiling = measure_ceiling(options, out / "logs")
        log(f"  {json.dumps(results.ceiling)}")
    if any(part in options.parts for part in PACKAGE_PARTS):
        log("model packages: exporting ResNet50 (random weights) at every precision ...")
        results.packages = export_packages(out / "packages", log)
        chosen = make_run_choice(results.packages) or "fp32"
        results.packages["make_run"] = chosen
        options.package = results.packages[chosen].get("path", "")
        log(f"  make run would serve: openvino {chosen} ({options.package})")
    if "runtimes" in options.parts:
        log("runtimes: every runtime and precision's ceiling, memory and start time ...")
        log("the same network as an ONNX file: its packages ...")
        onnx_packages = export_onnx_packages(out / "packages" / "onnx", log)
        results.runtimes = measure_runtimes(
            options, results.packages, out / "logs", log, onnx_packages
        )
        if options.package:
            log("make run's package: its ceiling in each way of running it ...")
            results.ceilings = package_ceilings(options, options.package, out / "logs", log)
    if any(name in options.parts for name in CONFIGS):
        with bench_database(), web_server(options, out / "logs") as web:
            token = make_token()
            for name, config in CONFIGS.items():
                if name in options.parts:
                    log(f"{config.title} ...")
                    results.runs[name] = run_pipeline(config, options, images, web, token, out)
                    log(f"  {summary_line(results.runs[name])}")
    for name, (peer_name, per_request) in PEER_PARTS.items():
        if name not in options.parts or not options.package:
            continue
        peer = PEERS[peer_name]
        try:
            python = peer_python(peer.venv, log) if options.peer_install else ready_peer(peer.venv)
        except PeerUnavailable as error:
            results.skipped[name] = str(error)
            log(f"{peer.label} peer SKIPPED: {error}")
            continue
        log(f"{peer.label} peer, make run's model package, {per_request} per request ...")
        try:
            results.runs[name] = run_peer(
                peer, per_request, peer_settings(options), images, python, out / "logs", name
            )
        except RuntimeError as error:
            # A peer that installs but does not serve is a finding, not the run's end.
            results.skipped[name] = f"{peer.label} did not serve: {error}"
            log(f"{peer.label} peer FAILED: {str(error)[-500:]}")
            continue
        log(f"  {summary_line(results.runs[name])}")
    if "decode" in options.parts:
        log("decoding: every decode path side by side ...")
        results.decoding = measure_decoding(settings.MODEL_INPUT_SIZE, log)
    results.machine["load_after"] = load_average()
    write_report(results, out)
    shutil.rmtree(settings.MEDIA_ROOT, ignore_errors=True)
    return out


def peer_settings(options: Options) -> PeerSettings:
    """The peers batch as the pipeline's workers do, and get the same clients and images."""
    return PeerSettings(
        package=options.package,
        count=options.images,
        clients=options.clients,
        latency_images=options.latency_images,
        max_batch_size=options.max_batch_size,
        batch_delay_ms=options.batch_delay_ms,
        threads=options.threads,
    )


def machine_info() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": load_average(),
    }


def summary_line(run: dict) -> str:
    figures = [f"{run['throughput_per_s']:.1f}/s at saturation"]
    if run.get("latency_ms"):
        figures.append(f"latency p50 {run['latency_ms']['p50']:.0f} ms")
    if run.get("failed"):
        figures.append(f"{run['failed']} FAILED")
    return ", ".join(figures)


# --- Ceiling -----------------------------------------------------------------------------


def measure_ceiling(options: Options, log_dir: Path) -> dict:
    """predict throughput at batch size 1 (one worker, the single-image time) and at the
    workers' batch size with as many processes and threads as the pipeline's workers."""
    single, batched = single_and_batched(options, log_dir)
    return {
        "single_images_per_s": single["images_per_s"],
        "single_predict_ms": single["batch_ms_p50"],
        "batch_size": options.max_batch_size,
        "processes": options.workers,
        "threads": options.threads,
        "images_per_s": batched["images_per_s"],
        "batch_ms_p50": batched["batch_ms_p50"],
        "load": load_average(),
    }


# --- The pipeline ----------------------------------------------------------------------


@contextlib.contextmanager
def bench_database() -> Iterator[None]:
    """A fresh database for this run, like the test runner's, dropped afterwards."""
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def make_token() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("bench", password=uuid.uuid4().hex)
    return Token.objects.create(user=user).key


def process_env(**overrides: str) -> dict:
    return child_env(
        settings_module="bench.settings",
        database_url=database_url(connection.settings_dict),
        INFERENCEHUB_BENCH_RUN_ID=settings.BENCH_RUN_ID,
        **overrides,
    )


@contextlib.contextmanager
def web_server(options: Options, log_dir: Path) -> Iterator[ManagedProcess]:
    """gunicorn as `make run` starts it, on a free port; yields it with its base_url set."""
    port = free_port()
    process = processes.web(PYTHON, port=port)
    # gunicorn.conf.py's settings, as under `make run`, unless the process count is measured.
    workers = {} if options.web_workers is None else {"WEB_CONCURRENCY": str(options.web_workers)}
    env = process_env(**workers)
    web = ManagedProcess(process.name, process.argv, env, log_dir).start()
    try:
        web.wait_for_log(process.ready_text)
        web.base_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{web.base_url}/healthz")
        yield web
    finally:
        web.stop()


@contextlib.contextmanager
def pipeline_processes(
    config: PipelineConfig, options: Options, log_dir: Path, traces: OtlpReceiver | None
) -> Iterator[list[ManagedProcess]]:
    """Celery, the inference workers and the bridge, on this configuration's own topics."""
    topics = kafka_names(f"bench-{settings.BENCH_RUN_ID}-{config.name}")
    with override_settings(**topics):
        ensure_topics()
    env = process_env(
        **topics,
        MODEL_NAME=config.model,
        MODEL_PACKAGE=options.package if config.package else "",
        OPENVINO_PERFORMANCE_HINT=config.openvino_hint,
        **(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": traces.endpoint,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(config.traced),
            }
            if traces
            else {}
        ),
    )
    worker_options = ["--max-batch-size", str(config.max_batch_size or options.max_batch_size)]
    worker_options += ["--max-batch-delay-ms", str(options.batch_delay_ms)]
    if options.threads:
        worker_options += ["--threads", str(options.threads)]
    celery = processes.celery(
        PYTHON,
        hostname=unique_celery_hostname("bench"),
        concurrency=options.celery_concurrency,
        include=config.celery_include,
    )
    wanted = [celery, processes.bridge(PYTHON)] + [
        processes.worker(PYTHON, f"worker{i}", *worker_options)
        for i in range(1, (config.workers or options.workers) + 1)
    ]
    started: list[ManagedProcess] = []
    try:
        # All started first, then waited for: they load their models side by side.
        for process in wanted:
            name = f"{config.name}-{process.name}"
            started.append(ManagedProcess(name, process.argv, env, log_dir).start())
        for managed, process in zip(started, wanted, strict=True):
            managed.wait_for_log(process.ready_text, timeout=180)
        yield started
    finally:
        for process in reversed(started):
            process.stop()


def run_pipeline(
    config: PipelineConfig,
    options: Options,
    images: list[tuple[str, bytes]],
    web: ManagedProcess,
    token: str,
    out: Path,
) -> dict:
    if config.megapixels is not None:
        images = make_images((config.megapixels,))
    base_url = web.base_url
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    traces = OtlpReceiver() if config.traced else None
    with (
        traces or contextlib.nullcontext(),
        pipeline_processes(config, options, out / "logs", traces) as processes,
    ):
        # A few jobs first, so every process has its connections and caches warm.
        warm_up = [upload(session, base_url, images[i % len(images)])[0] for i in range(4)]
        wait_until_finished(warm_up)
        components = {"web": [web.popen.pid]}
        for process in processes:
            components.setdefault(process.name.split("-")[-1].rstrip("0123456789"), []).append(
                process.popen.pid
            )
        components |= service_pids()
        cpu_before = {name: cpu_seconds(group) for name, group in components.items()}
        kafka = components.get("kafka", [])
        jit_before = jit_cpu_seconds(kafka)
        # The uploading clients are threads of this process (whose children are the
        # processes above): measured apart, as they are not the system's cost.
        clients_before = time.process_time()
        machine_before = machine_cpu_seconds()
        load_before = load_average()
        profilers = start_profilers(config, [web, *processes], out) if options.profile else []
        started = time.time()
        job_ids = upload_concurrently(
            base_url, token, images, options.images, options.clients, config.images_per_request
        )
        # Seldom: each look is a query of MariaDB's, counted as the system's CPU; the
        # throughput is timed by the jobs' own finishing times.
        wait_until_finished(job_ids, poll_s=1.0)
        stop_profilers(profilers)
        saturation = pipeline_figures(job_ids, started)
        saturation["load_before"] = load_before
        saturation["load_after"] = load_average()
        saturation["cpu_ms_per_job"] = {
            name: (cpu_seconds(group) - cpu_before[name]) * 1000 / len(job_ids)
            for name, group in components.items()
        }
        saturation["cpu_ms_per_job"]["clients"] = (
            (time.process_time() - clients_before) * 1000 / len(job_ids)
        )
        # Shown apart from the broker's work: compiling is what a young JVM does once, not
        # what a job costs (docs/performance.md, "Kafka's JIT").
        if kafka:
            jit = (jit_cpu_seconds(kafka) - jit_before) * 1000 / len(job_ids)
            saturation["cpu_ms_per_job"]["kafka"] -= jit
            saturation["cpu_ms_per_job"]["kafka JIT"] = jit
        machine_after = machine_cpu_seconds()
        busy, idle = (
            after - before for after, before in zip(machine_after, machine_before, strict=True)
        )
        # Everything else: the kernel's own work, and any other process on the machine.
        saturation["cpu_ms_per_job"]["other"] = busy * 1000 / len(job_ids) - sum(
            saturation["cpu_ms_per_job"].values()
        )
        saturation["machine_busy"] = busy / (busy + idle)
        # Part of Celery's CPU, shown apart from it so that the plumbing's own is visible.
        saturation["decode_ms_per_job"] = decode_cpu_ms(images, options.images)
        # Light load is one image at a time, the same whatever the uploads carry.
        if config.images_per_request == 1:
            latencies, stages = measure_latency(session, base_url, images, options.latency_images)
        else:
            latencies, stages = [], {}
        if traces:
            # Proof that the row was traced: what has arrived so far (the processes'
            # last spans are still on their way).
            saturation["spans_received"] = len(traces.received())
    return {
        "title": config.title,
        "unit": "jobs" if config.model == "instant" else "images",
        "images_per_request": config.images_per_request,
        **saturation,
        "latency_ms": percentiles(latencies),
        "latencies_ms": latencies,
        "stages_ms": stages,
    }


# Decodes of each image to time: enough to smooth out the CPU clock's tick.
DECODE_REPEATS = 5


def decode_cpu_ms(images: list[tuple[str, bytes]], count: int) -> float:
    """CPU time per job (ms) that decoding takes when count jobs are uploaded round-robin
    from images: each decoded here as the preprocessing does it, on this thread's CPU
    clock, so that other work on the machine does not count (a job's preprocess_ms is
    wall time)."""
    per_image = []
    for _name, data in images:
        started = time.thread_time()
        for _ in range(DECODE_REPEATS):
            prepare_for_model(io.BytesIO(data), size=settings.MODEL_INPUT_SIZE)
        per_image.append((time.thread_time() - started) * 1000 / DECODE_REPEATS)
    return statistics.mean(per_image[i % len(images)] for i in range(count))


def service_pids() -> dict[str, list[int]]:
    """The stack's data services this run uses, by name, when the stack started them
    (services elsewhere count as "other")."""
    pids = {name: running_pid(name) for name in ("mariadb", "redis", "kafka")}
    return {name: [pid] for name, pid in pids.items() if pid is not None}


def stat_cpu_seconds(stat: Path) -> float:
    """CPU time (user + system) in a /proc .../stat file: a process's or a thread's."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes and their children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total = 0.0
    pending = list(pids)
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        with contextlib.suppress(OSError):
            total += stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
    return total


# HotSpot's JIT compiler threads, as /proc shows their names (cut to 15 characters).
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


def jit_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by the JIT compiler threads of these JVMs."""
    total = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if (task / "comm").read_text().strip() in JIT_THREADS:
                    total += stat_cpu_seconds(task / "stat")
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, idle / tick


def start_profilers(
    config: PipelineConfig, processes: list[ManagedProcess], out: Path
) -> list[subprocess.Popen]:
    """py-spy, sampling each process and its children, until stop_profilers."""
    profilers = []
    (out / "profiles").mkdir(exist_ok=True)
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    for process in processes:
        path = out / "profiles" / f"{config.name}-{process.name.split('-')[-1]}.txt"
        argv = [py_spy, "record", "--pid", str(process.popen.pid), "--subprocesses"]
        argv += ["--rate", "50", "--format", "raw", "--nonblocking", "--output", str(path)]
        profilers.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return profilers


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for profiler in profilers:
        profiler.wait(60)


def upload(session: requests.Session, base_url: str, image: tuple[str, bytes]) -> tuple[str, float]:
    """Upload one image; returns its job id and when the upload was accepted."""
    [job_id], accepted = upload_many(session, base_url, [image])
    return job_id, accepted


def upload_many(
    session: requests.Session, base_url: str, images: list[tuple[str, bytes]]
) -> tuple[list[str], float]:
    """Upload images in one request; returns their job ids and when they were accepted."""
    files = [("image", (name, data, "image/jpeg")) for name, data in images]
    response = session.post(f"{base_url}/api/jobs/", files=files, timeout=120)
    accepted = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:500]}")
    body = response.json()
    return [job["id"] for job in body.get("jobs", [body])], accepted


def upload_concurrently(
    base_url: str,
    token: str,
    images: list[tuple[str, bytes]],
    count: int,
    clients: int,
    per_request: int = 1,
) -> list[str]:
    """Upload count images, per_request in each request, with `clients` concurrent
    clients, as fast as they are accepted."""
    local = threading.local()

    def one(start: int) -> list[str]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Token {token}"
        chunk = [images[i % len(images)] for i in range(start, min(start + per_request, count))]
        return upload_many(local.session, base_url, chunk)[0]

    with ThreadPoolExecutor(clients) as pool:
        return [job_id for ids in pool.map(one, range(0, count, per_request)) for job_id in ids]


def wait_until_finished(job_ids: list[str], timeout: float = 900, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while Job.objects.filter(pk__in=job_ids).exclude(status__in=Job.FINISHED).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished within {timeout}s")
        time.sleep(poll_s)


def pipeline_figures(job_ids: list[str], started: float) -> dict:
    jobs = list(Job.objects.filter(pk__in=job_ids))
    last = max(job.finished_at for job in jobs).timestamp()
    batch_sizes = [job.inference_batch_size for job in jobs if job.inference_batch_size]
    return {
        "count": len(jobs),
        "failed": sum(job.status != Job.Status.SUCCEEDED for job in jobs),
        "seconds": last - started,
        "throughput_per_s": len(jobs) / (last - started),
        "average_batch": statistics.mean(batch_sizes) if batch_sizes else 0,
        "preprocess_ms_p50": statistics.median(job.preprocess_ms or 0 for job in jobs),
    }


def measure_latency(
    session: requests.Session, base_url: str, images: list[tuple[str, bytes]], count: int
) -> tuple[list[float], dict]:
    """One image at a time: from upload accepted to result stored (so queryable), and the
    time in each stage from the job's own timestamps."""
    latencies = []
    job_ids = []
    for index in range(count):
        job_id, accepted = upload(session, base_url, images[index % len(images)])
        # The database is polled rather than the API, so the polling itself does not
        # load the web server; a stored result is what the API returns.
        wait_until_finished([job_id], poll_s=0.002)
        latencies.append((time.time() - accepted) * 1000)
        job_ids.append(job_id)
    jobs = Job.objects.filter(pk__in=job_ids)
    stages = {}
    for stage, start, end in STAGES:
        durations = [
            (getattr(job, end) - getattr(job, start)).total_seconds() * 1000 for job in jobs
        ]
        stages[stage] = statistics.median(durations)
    stages["preprocess (in queued)"] = statistics.median(job.preprocess_ms or 0 for job in jobs)
    stages["predict (in inference)"] = statistics.median(job.inference_ms or 0 for job in jobs)
    return latencies, stages
