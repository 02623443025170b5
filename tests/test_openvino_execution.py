"""How OpenVINO runs a model on this CPU: the throughput hint's several infer requests from
one process answer exactly as one synchronous request does, the choice follows the cores,
and a malformed OPENVINO_* setting stops start-up naming it."""

import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from serving.runtimes.openvino import (
    Execution,
    compile_model,
    cpu_flags,
    describe_execution,
    performance_config,
    runner,
)
from tests.conftest import REPO

SIDE = 16
CLASSES = 7


def small_classifier() -> ov.Model:
    """A convolution, pooling and a dense softmax layer over (N, 16, 16, 3) float images,
    with a dynamic batch dimension as exported packages have."""
    rng = np.random.default_rng(0)
    images = ops.parameter([-1, SIDE, SIDE, 3], np.float32, name="images")
    nchw = ops.transpose(images, ops.constant(np.array([0, 3, 1, 2], np.int64)))
    kernel = ops.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    features = ops.relu(ops.convolution(nchw, kernel, [1, 1], [1, 1], [1, 1], [1, 1]))
    pooled = ops.reduce_mean(features, ops.constant(np.array([2, 3], np.int64)), False)
    weights = ops.constant(rng.standard_normal((8, CLASSES)).astype(np.float32))
    logits = ops.matmul(pooled, weights, False, False)
    return ov.Model([ops.softmax(logits, 1)], [images], "small")


def test_the_async_runner_answers_exactly_as_the_synchronous_one():
    compiled, _ = compile_model(
        small_classifier(), "fp32", execution=Execution(hint="throughput", streams=2)
    )
    batch = np.random.default_rng(1).uniform(0, 255, (11, SIDE, SIDE, 3)).astype(np.float32)
    synchronous = runner(compiled, 1)(batch)
    for requests in (2, 4, 11):
        answers = runner(compiled, requests)
        # Twice: the queue's requests are reused, and each answer must be a copy.
        assert np.array_equal(answers(batch), synchronous)
        assert np.array_equal(answers(batch[::-1]), synchronous[::-1])
    assert synchronous.shape == (11, CLASSES)


def test_the_throughput_hint_and_the_latency_hint_give_the_same_answers():
    batch = np.random.default_rng(2).uniform(0, 255, (8, SIDE, SIDE, 3)).astype(np.float32)
    answers = {}
    for hint in ("throughput", "latency"):
        compiled, _ = compile_model(small_classifier(), "fp32", execution=Execution(hint=hint))
        assert f"hint={hint}" in describe_execution(compiled)
        answers[hint] = runner(compiled)(batch)
    assert np.array_equal(answers["throughput"], answers["latency"])


def test_auto_runs_throughput_streams_on_several_cores_and_latency_on_one():
    assert performance_config(Execution(), threads=2) == {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": 2,
    }
    assert performance_config(Execution(), threads=1)["PERFORMANCE_HINT"] == "LATENCY"
    assert performance_config(Execution("throughput", streams=3), threads=2)["NUM_STREAMS"] == 3
    assert "NUM_STREAMS" not in performance_config(Execution("latency"), threads=2)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_tile amx_int8\n")
    assert cpu_flags(cpuinfo) == ["avx2", "avx512f", "amx_tile", "amx_int8"]
    assert cpu_flags(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OPENVINO_PERFORMANCE_HINT": "fast"}, "OPENVINO_PERFORMANCE_HINT"),
        ({"OPENVINO_STREAMS": "-1"}, "OPENVINO_STREAMS"),
        ({"OPENVINO_STREAMS": "two"}, "OPENVINO_STREAMS"),
        ({"OPENVINO_INFER_REQUESTS": "-4"}, "OPENVINO_INFER_REQUESTS"),
        ({"OPENVINO_PERFORMANCE_HINT": "latency", "OPENVINO_STREAMS": "2"}, "OPENVINO_STREAMS"),
    ],
)
def test_a_malformed_openvino_setting_stops_start_up_naming_it(env, named):
    result = subprocess.run(
        [sys.executable, "-c", "import inferencehub.settings"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr, result.stderr
