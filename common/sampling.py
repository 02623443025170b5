"""The sampler of common/tracing.py: the one the standard variables OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG choose, except that two kinds of trace no job's story needs are
never started. Imported only once tracing is on: it needs the SDK, which an untraced
process never loads."""

from collections.abc import Collection, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


def configured_sampler() -> Sampler:
    """The sampler the OTEL_TRACES_SAMPLER variables name, read as the SDK's TracerProvider
    reads them when given none (this private function is what it calls): every standard
    value and its argument keep their meaning."""
    return sampling._get_from_env_or_default()


class WithoutStrayRoots(Sampler):
    """Drops a span that would start a trace (it has no parent) when it is a client's,
    or is named in untraced_roots; asks the configured sampler about every other span.

    A client's span with no parent is a MariaDB query made outside any request or task (a
    worker reading its model's registration as it starts, beat's dispatch pass looking for
    jobs to admit): alone in a trace of its own, it is part of no job's story. untraced_roots
    names spans that would start a trace every few seconds whatever happens, such as the
    Celery span of beat's dispatch task (inferencehub/celery.py).

    A sampler because it decides before the span exists: a dropped span costs nothing, and
    the spans under it follow its decision as the parent-based samplers say."""

    def __init__(self, configured: Sampler, untraced_roots: Collection[str] = ()) -> None:
        self.configured = configured
        self.untraced_roots = frozenset(untraced_roots)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and (kind is SpanKind.CLIENT or name in self.untraced_roots):
            return SamplingResult(Decision.DROP)
        return self.configured.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"WithoutStrayRoots{{{self.configured.get_description()}}}"
