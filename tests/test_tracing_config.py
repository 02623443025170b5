"""Which exporter the standard OTEL_* variables choose (common/tracing.py); each case in a
process of its own, since a process installs its tracer provider once."""

import os
import subprocess

import pytest

from common import tracing
from stack.harness import PYTHON
from tests.conftest import REPO

CHOSEN_EXPORTER = """
from opentelemetry import trace
from common import tracing
print(tracing.configure("probe"))
provider = trace.get_tracer_provider()
processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
print(*(type(p.span_exporter).__name__ for p in processors))
"""


def exporter_chosen(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    completed = subprocess.run(
        [PYTHON, "-c", CHOSEN_EXPORTER],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def test_tracing_stays_off_unless_an_exporter_is_named():
    assert exporter_chosen() == ["False"]
    assert exporter_chosen(OTEL_TRACES_EXPORTER="otlp") == ["False"]


def test_an_otlp_endpoint_turns_on_the_otlp_exporter():
    chosen = exporter_chosen(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert chosen == ["True", "OTLPSpanExporter"]


def test_zipkin_is_chosen_by_the_standard_variable():
    chosen = exporter_chosen(
        OTEL_TRACES_EXPORTER="zipkin",
        OTEL_EXPORTER_ZIPKIN_ENDPOINT="http://127.0.0.1:9/api/v2/spans",
    )
    assert chosen == ["True", "ZipkinExporter"]


def test_the_sdk_switch_and_none_keep_it_off():
    assert exporter_chosen(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="zipkin") == ["False"]
    assert exporter_chosen(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_ENDPOINT="x") == [
        "False"
    ]


def test_a_misspelt_exporter_is_refused_rather_than_left_off(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkn")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER must be one of otlp, zipkin"):
        tracing.enabled()


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("api/jobs/(?P<pk>[^/.]+)/$", "/api/jobs/<pk>/"),
        ("api/jobs/(?P<pk>[^/.]+)\\.(?P<format>[a-z0-9]+)/?$", "/api/jobs/<pk>.<format>/"),
        ("^api/jobs$", "/api/jobs"),
        (
            "admin/predictions/job/<path:object_id>/change/",
            "/admin/predictions/job/<object_id>/change/",
        ),
        ("admin/(?P<app_label>auth|predictions)/$", "/admin/<app_label>/"),
        ("", "/"),
    ],
)
def test_a_request_span_is_named_by_its_route_template_not_its_regex(route, template):
    assert tracing.route_template(route) == template
