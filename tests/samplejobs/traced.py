"""A job that reports the trace span it runs in, and a resources builder that makes a worker process export
its spans as JSON lines to the file named by FORGEJOBS_TEST_SPANS (for tests/test_tracing.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from forgejobs import Context, Job, Settings


class WhereAmI(Job, queue="fast", attempts=2):
    """Return the trace and span id current while perform runs; fail the first attempt if asked."""

    fail_first: bool = False

    def perform(self, ctx: Context) -> dict[str, str]:
        from opentelemetry import trace

        if self.fail_first and ctx.attempt == 1:
            raise RuntimeError("planned failure")
        span = trace.get_current_span().get_span_context()
        return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}


def export_spans_to_file(settings: Settings) -> None:
    """Resources builder: install an SDK tracer provider whose spans go to FORGEJOBS_TEST_SPANS."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    path = os.environ["FORGEJOBS_TEST_SPANS"]

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a", encoding="utf-8") as fh:
                for span in spans:
                    fh.write(json.dumps(_plain(span)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def _plain(span: Any) -> dict[str, Any]:
    ctx = span.get_span_context()
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "links": [format(link.context.span_id, "016x") for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }
