"""The model's own predict throughput on preprocessed tensors: the pipeline's ceiling.

Run as `python -m bench.ceiling --batch-size 32 --threads 2 --seconds 10` (add
`--runtime openvino --precision fp32` or `--model-package DIR`, and for a package how
OpenVINO runs it: `--hint`, `--streams`, `--requests`), once per worker process the
pipeline would run, all started together: each loads the model as a worker does, prints
"loaded" (the parent times the start from it), then "ready", waits for a line on stdin so
that all measure at the same time, then prints one JSON line with what it measured, its
resident memory and CPU time per image included.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stack.harness import REPO


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--runtime", default="tensorflow")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--model-package", default="")
    parser.add_argument("--hint", default="auto", help="OpenVINO: auto, throughput or latency")
    parser.add_argument("--streams", type=int, default=0, help="OpenVINO: 0 for its choice")
    parser.add_argument("--requests", type=int, default=0, help="OpenVINO: 0 for its choice")
    args = parser.parse_args()

    from serving.loading import load_served
    from serving.runtimes.openvino import Execution

    served = load_served(
        package=args.model_package,
        runtime=args.runtime,
        precision=args.precision,
        name=args.model,
        weights="random",
        threads=args.threads or None,
        execution=Execution(hint=args.hint, streams=args.streams, requests=args.requests),
    )
    print("loaded", flush=True)
    rng = np.random.default_rng(0)
    size = served.input_size
    images = list(rng.integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8))
    top_k = [5] * args.batch_size
    served.predict(images, top_k)  # warm up at this batch size
    print("ready", flush=True)
    sys.stdin.readline()

    batch_seconds = []
    # The whole process's CPU, OpenVINO's and TensorFlow's threads included: on a shared
    # machine, core-ms per image is the figure that other work does not change much.
    cpu_started = time.process_time()
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds or len(batch_seconds) < 3:
        before = time.perf_counter()
        served.predict(images, top_k)
        batch_seconds.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    print(
        json.dumps(
            {
                "batch_size": args.batch_size,
                "threads": args.threads,
                "batches": len(batch_seconds),
                "images_per_s": len(batch_seconds) * args.batch_size / elapsed,
                "batch_ms_p50": float(np.percentile(batch_seconds, 50) * 1000),
                "cpu_s": cpu_s,
                "images": len(batch_seconds) * args.batch_size,
                "execution": served.execution,
                "rss_mib": resident_mib(),
            }
        ),
        flush=True,
    )


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_ceiling_probes(
    processes: int,
    batch_size: int,
    threads: int,
    seconds: float,
    log_dir: Path,
    model_args: tuple[str, ...] = (),
    name: str = "",
) -> dict:
    """model_args: how the probe loads the model (bench.ceiling's --runtime, --precision,
    --model-package); the default is the workers' TensorFlow fp32."""
    argv = [sys.executable, "-m", "bench.ceiling", "--batch-size", str(batch_size)]
    argv += ["--threads", str(threads), "--seconds", str(seconds), *model_args]
    log_dir.mkdir(parents=True, exist_ok=True)
    probes = []
    spawned = time.monotonic()
    for index in range(processes):
        with open(log_dir / f"ceiling{name}-b{batch_size}-{index}.log", "wb") as stderr:
            probes.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            )
    start_s = []
    try:
        for probe in probes:
            if probe.stdout.readline().strip() != "loaded":
                raise RuntimeError(f"ceiling probe failed, see {log_dir}")
            start_s.append(time.monotonic() - spawned)
            if probe.stdout.readline().strip() != "ready":
                raise RuntimeError(f"ceiling probe failed, see {log_dir}")
        for probe in probes:  # all measure at once, competing for the cores like workers do
            probe.stdin.write("go\n")
            probe.stdin.flush()
        measured = [json.loads(probe.stdout.readline()) for probe in probes]
    finally:
        for probe in probes:
            probe.stdin.close()
            probe.wait(60)
    return {
        "images_per_s": sum(m["images_per_s"] for m in measured),
        "batch_ms_p50": statistics.median(m["batch_ms_p50"] for m in measured),
        "rss_mib": max(m["rss_mib"] for m in measured),
        "cpu_ms_per_image": sum(m["cpu_s"] for m in measured)
        * 1000
        / sum(m["images"] for m in measured),
        "execution": measured[0]["execution"],
        # With several probes starting together, the last to load waited on the others.
        "start_s": min(start_s),
    }


if __name__ == "__main__":
    main()


def single_and_batched(
    options, log_dir: Path, model_args: tuple[str, ...] = (), name: str = ""
) -> tuple[dict, dict]:
    """The probes at batch size 1 (one process: the single-image time) and at the workers'
    batch size with as many processes as the pipeline's workers (bench.run.Options)."""
    single = run_ceiling_probes(
        1, 1, options.threads, options.ceiling_seconds, log_dir, model_args, name
    )
    batched = run_ceiling_probes(
        options.workers,
        options.max_batch_size,
        options.threads,
        options.ceiling_seconds,
        log_dir,
        model_args,
        name,
    )
    return single, batched


def package_ceilings(options, package: str, log_dir: Path, log) -> dict:
    """The package's ceiling in each way of running it that a host could use, and the best:
    the workers' batch in several processes with the latency hint (as the workers ran
    before), or in one with the latency hint, or in one with the throughput hint's streams
    fed by 2 or 4 infer requests, each a slice of the batch."""
    batch = options.max_batch_size
    ways = {
        f"{options.workers} processes, latency hint, batch {batch}": (
            options.workers,
            ("--hint", "latency", "--requests", "1"),
        ),
        f"1 process, latency hint, batch {batch}": (1, ("--hint", "latency", "--requests", "1")),
    }
    for requests in (2, 4):
        name = f"1 process, throughput hint, {requests} requests of {-(-batch // requests)}"
        ways[name] = (1, ("--hint", "throughput", "--requests", str(requests)))
    tried = {}
    for index, (name, (processes, execution)) in enumerate(ways.items()):
        figures = run_ceiling_probes(
            processes,
            batch,
            options.threads,
            options.ceiling_seconds,
            log_dir,
            ("--model-package", package, *execution),
            f"-way{index}",
        )
        tried[name] = {"processes": processes, **figures}
        log(f"  {name}: {json.dumps(tried[name])}")
    best = max(tried, key=lambda name: tried[name]["images_per_s"])
    return {"tried": tried, "best": best}
