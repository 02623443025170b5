"""A small run of `manage.py benchmark`: every part runs and writes its figures and files.

How fast anything is, is not asserted: the machine is shared and the figures are for people
(docs/performance.md)."""

import json
import subprocess

import pytest

from bench.peer_runs import PEER_PARTS
from bench.run import cpu_seconds, jit_cpu_seconds, service_pids
from stack.harness import REPO, manage

pytestmark = pytest.mark.e2e


def test_a_small_benchmark_run_writes_every_figure_table_and_plot(tmp_path):
    completed = subprocess.run(
        manage(
            "benchmark",
            "--images", "6",
            "--clients", "2",
            "--latency-images", "3",
            "--workers", "1",
            "--ceiling-seconds", "1",
            # Making a peer's venv downloads Ray: a test run measures a peer only when
            # `make bench` made its venv before.
            "--no-peer-install",
            "--out-dir", str(tmp_path),
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        # The run exports two ResNet50 packages and starts a probe per runtime, besides
        # the pipelines: on a busy shared machine that alone took over 15 minutes.
        timeout=1800,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    [out] = tmp_path.iterdir()
    results = json.loads((out / "results.json").read_text())
    assert results["ceiling"]["images_per_s"] > 0
    assert results["ceiling"]["single_predict_ms"] > 0
    for name in ("pipeline", "seed", "plumbing"):
        run = results["runs"][name]
        assert (run["count"], run["failed"]) == (6, 0), name
        assert run["throughput_per_s"] > 0
        assert run["latency_ms"]["count"] == 3
        assert set(run["stages_ms"]) >= {"queued", "to Kafka", "inference", "storing"}
        # The instant model's CPU per job can be below the clock's 10 ms tick over 6 jobs.
        assert run["cpu_ms_per_job"]["worker"] >= 0
        assert run["cpu_ms_per_job"]["kafka JIT"] >= 0
    for name in ("pipeline-multi", "plumbing-multi", "plumbing-small"):  # 8 per upload
        run = results["runs"][name]
        assert (run["count"], run["failed"]) == (6, 0), name
        assert 0 < run["machine_busy"] <= 1
    assert results["runs"]["seed"]["average_batch"] == 1
    assert results["runs"]["plumbing"]["decode_ms_per_job"] > 0
    # Every runtime and precision side by side, with the packages' faithfulness figures.
    runtimes, packages = results["runtimes"], results["packages"]
    assert {"tensorflow fp32", "openvino fp32", "openvino int8"} <= set(runtimes)
    for name, figures in runtimes.items():
        assert figures["images_per_s"] > 0 and figures["batch_1_images_per_s"] > 0, name
        assert figures["rss_mib"] > 0 and figures["start_s"] > 0, name
    assert 0 <= packages["int8"]["faithfulness"]["top1_agreement"] <= 1
    # The same network as an ONNX file, as a user's own model is served.
    assert {"onnx openvino fp32", "onnx openvino int8", "onnx onnxruntime fp32"} <= set(runtimes)
    assert runtimes["onnx openvino int8"]["faithfulness"]["reference"].startswith("fp32 ONNX")
    assert "path" in packages["bf16"] or "no bf16" in packages["bf16"]["skipped"]
    # 1 worker, 2 workers; and 1 image per upload, as the peers' one-image rows get them.
    for name in ("pipeline-multi-package", "pipeline-multi-package-2", "pipeline-package"):
        run = results["runs"][name]
        assert (run["count"], run["failed"]) == (6, 0), name
    # make run's package in each way of running it, the best named, and the pipeline's
    # workers' CPU per image set against the best's.
    ceilings = results["ceilings"]
    assert len(ceilings["tried"]) == 4 and ceilings["best"] in ceilings["tried"]
    for name, figures in ceilings["tried"].items():
        assert figures["images_per_s"] > 0 and figures["cpu_ms_per_image"] > 0, name
        # Each way ran as it says (OpenVINO's own account of the compiled model).
        hint = "throughput" if "throughput hint" in name else "latency"
        assert f"hint={hint}" in figures["execution"], name
    assert results["machine"]["cpu_flags"] is not None
    assert results["runs"]["pipeline"]["cpu_ms_per_job"]["worker"] > 0
    # Each peer runs from a venv of its own: without it the run says so, never silently.
    for name in PEER_PARTS:  # Ray Serve, BentoML, MLServer; 1 and 8 images per request
        if name in results["runs"]:
            assert results["runs"][name]["throughput_per_s"] > 0, name
        else:
            assert "venv" in results["skipped"][name]
            assert "SKIPPED" in completed.stdout
    decoding = results["decoding"]["groups"]["JPEG 12 MP"]
    assert decoding["in use: prepare_for_model"]["cpu_ms"] > 0
    table = (out / "results.md").read_text()
    for text in (
        "ceiling",
        "seed-style baseline",
        "plumbing ceiling",
        "| target |",
        "Runtimes",
        "in each way of running it",
        "within 10 % of the best ceiling's",
    ):
        assert text in table
    for plot in ("throughput.png", "latency.png", "stages.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def test_the_brokers_jit_compiler_is_counted_apart_from_its_other_work():
    [pid] = service_pids()["kafka"]
    # A started broker has compiled its hot code, and compiling is not all it has done.
    assert 0 < jit_cpu_seconds([pid]) < cpu_seconds([pid])
