"""The model's own predict throughput on preprocessed tensors: the pipeline's ceiling.

Run as `python -m bench.ceiling --batch-size 32 --threads 2 --seconds 10`, once per worker
process the pipeline would run, all started together: each loads the model, prints
"ready", waits for a line on stdin so that all measure at the same time, then prints one
JSON line with what it measured.
"""

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()

    from workers.serving import load_model

    served = load_model(name=args.model, weights="random", threads=args.threads or None)
    rng = np.random.default_rng(0)
    size = served.input_size
    images = list(rng.integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8))
    top_k = [5] * args.batch_size
    served.predict(images, top_k)  # warm up at this batch size
    print("ready", flush=True)
    sys.stdin.readline()

    batch_seconds = []
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds or len(batch_seconds) < 3:
        before = time.perf_counter()
        served.predict(images, top_k)
        batch_seconds.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "batch_size": args.batch_size,
                "threads": args.threads,
                "batches": len(batch_seconds),
                "images_per_s": len(batch_seconds) * args.batch_size / elapsed,
                "batch_ms_p50": float(np.percentile(batch_seconds, 50) * 1000),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
