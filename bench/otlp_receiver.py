"""An OTLP/HTTP trace receiver in this process, standing in for a collector: it keeps every
span it is sent as a plain dict. The benchmark's traced row sends its spans here (what a
collector costs is the collector's, not the pipeline's), and the trace test reads them."""

import http.server
import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

ANSWER = ExportTraceServiceResponse().SerializeToString()


class OtlpReceiver(http.server.ThreadingHTTPServer):
    """Use as a context manager: it serves on a free loopback port while open."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT names."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.spans)

    def keep(self, body: bytes) -> None:
        export = ExportTraceServiceRequest.FromString(body)
        kept = []
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                kept += [
                    {
                        "service": resource.get("service.name", ""),
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        "attributes": {
                            a.key: a.value.string_value or a.value.int_value
                            for a in span.attributes
                        },
                    }
                    for span in scope_spans.spans
                ]
        with self.lock:
            self.spans += kept


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        self.server.keep(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args) -> None:
        pass
