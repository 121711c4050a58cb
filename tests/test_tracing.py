"""OpenTelemetry spans: one producer span per enqueue whose context travels in the envelope, one consumer span
per attempt around perform, in the same trace; checked with the SDK's in-memory exporter and across a
worker process."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from forgejobs import Client, Settings, tracing
from forgejobs.envelope import Envelope
from forgejobs.keys import QueueKeys
from forgejobs.runtime.worker import Worker
from forgejobs.status import Status
from tests.conftest import WorkerProcess, wait_for
from tests.samplejobs.basic import Echo
from tests.samplejobs.traced import WhereAmI

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.use_tracer_provider(provider):
        yield exporter
    provider.shutdown()


def stored_envelope(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = conn.hget(FAST.job(job_id), "d")
    assert raw is not None
    return cast(dict[str, Any], json.loads(raw))


def only(found: list[ReadableSpan], **where: Any) -> ReadableSpan:
    matching = [s for s in found if all(getattr(s, k) == v for k, v in where.items())]
    assert len(matching) == 1, f"expected one span with {where}, got {[s.name for s in matching]}"
    return matching[0]


def test_enqueue_makes_a_producer_span_inside_the_callers_span_and_stores_its_context(
    client: Client, conn: redis.Redis, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test", tracer_provider=tracing._provider)
    with tracer.start_as_current_span("POST /signup") as request:
        handle = Echo.enqueue(text="hi")

    producer = only(list(spans.get_finished_spans()), kind=SpanKind.PRODUCER)
    assert producer.name == "enqueue fast"
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id
    assert producer.context.trace_id == request.get_span_context().trace_id
    assert dict(producer.attributes or {}) == {
        "messaging.system": "forgejobs",
        "messaging.destination.name": "fast",
        "messaging.message.id": handle.id,
        "messaging.operation.type": "create",
        "messaging.operation.name": "enqueue",
        "forgejobs.job.name": "fast.echo",
    }
    traceparent = stored_envelope(conn, handle.id)["trace"]["traceparent"]
    assert traceparent.startswith(f"00-{producer.context.trace_id:032x}-{producer.context.span_id:016x}-")


def test_without_a_tracer_provider_the_envelope_carries_no_trace(client: Client, conn: redis.Redis) -> None:
    assert not tracing.enabled()
    handle = Echo.enqueue(text="hi")
    assert "trace" not in stored_envelope(conn, handle.id)


def test_each_attempt_runs_in_a_consumer_span_of_the_enqueue_trace_current_while_perform_runs(
    client: Client, settings: Settings, conn: redis.Redis, spans: InMemorySpanExporter
) -> None:
    # given a job enqueued under tracing whose first attempt fails
    handle = WhereAmI.enqueue(fail_first=True)
    producer = only(list(spans.get_finished_spans()), kind=SpanKind.PRODUCER)

    # when a real worker runs both attempts
    Worker(settings, client.registry, connection=conn).run(burst=True, horizon=30)
    assert handle.status() is Status.SUCCEEDED

    consumers = sorted(
        (s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER),
        key=lambda s: cast(int, (s.attributes or {})["forgejobs.job.attempt"]),
    )
    assert [s.name for s in consumers] == ["perform fast", "perform fast"]
    first, second = consumers
    for span in consumers:
        # then each is a child of the enqueue span, links to it, and follows the messaging conventions
        assert span.parent is not None and span.parent.span_id == producer.context.span_id
        assert span.context.trace_id == producer.context.trace_id
        assert [link.context.span_id for link in span.links] == [producer.context.span_id]
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "forgejobs"
        assert attributes["messaging.destination.name"] == "fast"
        assert attributes["messaging.message.id"] == handle.id
        assert attributes["messaging.operation.type"] == "process"
    # the failed attempt says so, with the exception recorded
    assert (first.attributes or {})["forgejobs.outcome"] == "retry"
    assert first.status.status_code is StatusCode.ERROR and "planned failure" in (first.status.description or "")
    assert [event.name for event in first.events] == ["exception"]
    assert (second.attributes or {})["forgejobs.outcome"] == "succeeded"
    assert second.status.status_code is StatusCode.OK
    # and the span is current inside perform: what the handler saw is the second attempt's span
    assert handle.result(timeout=5) == {
        "trace_id": f"{second.context.trace_id:032x}",
        "span_id": f"{second.context.span_id:016x}",
    }


def test_the_trace_crosses_into_a_worker_process(
    client: Client,
    spans: InMemorySpanExporter,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # given a worker process exporting its spans to a file, and a job enqueued here under tracing
    exported = tmp_path / "spans.jsonl"
    start_worker(
        "--queues",
        "fast",
        env={
            "FORGEJOBS_RESOURCES": "tests.samplejobs.traced:export_spans_to_file",
            "FORGEJOBS_TEST_SPANS": str(exported),
        },
    )
    handle = WhereAmI.enqueue()
    producer = only(list(spans.get_finished_spans()), kind=SpanKind.PRODUCER)

    # when the worker has run it
    assert handle.result(timeout=30)["trace_id"] == f"{producer.context.trace_id:032x}"

    # then its consumer span, written by the other process, continues the producer's trace
    def consumer() -> dict[str, Any] | None:
        lines = exported.read_text().splitlines() if exported.exists() else []
        return next((s for s in map(json.loads, lines) if s["kind"] == "CONSUMER"), None)

    span = wait_for(consumer, timeout=10, what="the worker's consumer span")
    assert isinstance(span, dict)
    assert span["trace_id"] == f"{producer.context.trace_id:032x}"
    assert span["parent_id"] == f"{producer.context.span_id:016x}"
    assert span["links"] == [f"{producer.context.span_id:016x}"]
    assert span["attributes"]["messaging.message.id"] == handle.id
    assert span["attributes"]["forgejobs.outcome"] == "succeeded"


# -- the consumer span on its own, and tracing switched off -------------------------------------------


@pytest.mark.parametrize(
    "carrier",
    [None, {"traceparent": "not-a-traceparent"}, {"traceparent": f"00-{'0' * 32}-{'0' * 16}-01"}],
    ids=["no trace", "unreadable trace", "invalid ids"],
)
def test_a_job_without_a_usable_trace_context_runs_in_a_root_span_without_links(
    carrier: dict[str, str] | None, spans: InMemorySpanExporter
) -> None:
    envelope = Envelope(id="job-1", name="fast.echo", payload={}, attempt=3, trace=carrier)
    before = trace.get_current_span()
    with tracing.perform_span(envelope, "fast") as span:
        assert trace.get_current_span() is span
    assert trace.get_current_span() is before  # the extracted context, if any, was detached again
    consumer = only(list(spans.get_finished_spans()), kind=SpanKind.CONSUMER)
    assert consumer.parent is None and list(consumer.links) == []
    assert (consumer.attributes or {})["forgejobs.job.attempt"] == 3


@pytest.mark.parametrize(
    ("word", "error", "status"),
    [
        ("succeeded", None, StatusCode.OK),
        ("retry", "ValueError: boom", StatusCode.ERROR),
        ("cancelled", None, StatusCode.UNSET),
        ("rate_limited", None, StatusCode.UNSET),
    ],
)
def test_the_outcome_sets_the_spans_status_only_for_success_and_errors(
    word: str, error: str | None, status: StatusCode, spans: InMemorySpanExporter
) -> None:
    envelope = Envelope(id="job-1", name="fast.echo", payload={})
    with tracing.perform_span(envelope, "fast") as span:
        tracing.outcome(span, word, error)
        tracing.record_exception(ValueError("seen"))
    consumer = only(list(spans.get_finished_spans()), kind=SpanKind.CONSUMER)
    assert (consumer.attributes or {})["forgejobs.outcome"] == word
    assert consumer.status.status_code is status and consumer.status.description == error
    assert [e.name for e in consumer.events] == ["exception"]  # record_exception went to the current span


def test_with_no_tracer_provider_spans_are_none_and_reporting_on_them_does_nothing() -> None:
    assert not tracing.enabled()
    with tracing.perform_span(Envelope(id="job-1", name="fast.echo", payload={}), "fast") as span:
        assert span is None
        tracing.outcome(span, "retry", "ValueError: boom")
        tracing.record_exception(ValueError("nowhere to go"))
    assert tracing.enqueue_carrier("fast", "fast.echo", "job-1") == ""


def test_without_opentelemetry_installed_tracing_is_off_even_with_a_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a copy of forgejobs.tracing imported as if opentelemetry-api were missing (the real module is untouched)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    spec = importlib.util.spec_from_file_location("forgejobs._tracing_without_otel", tracing.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)

    assert copy.trace is None
    with copy.use_tracer_provider(TracerProvider()):
        assert not copy.enabled()
        assert copy.enqueue_carrier("fast", "fast.echo", "job-1") == ""
        with copy.perform_span(Envelope(id="job-1", name="fast.echo", payload={}), "fast") as span:
            assert span is None
            copy.record_exception(ValueError("nowhere to go"))
