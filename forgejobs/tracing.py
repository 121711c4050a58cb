"""OpenTelemetry traces: a producer span for each job enqueued, a consumer span around each attempt's `perform`.

Installed with `forgejobs[otel]` (opentelemetry-api); without it, or while no tracer provider is configured,
nothing here costs more than one check per enqueue and per attempt. With a provider configured (the
OpenTelemetry SDK, or `opentelemetry-instrument`):

- **Enqueue** makes one span per job, kind PRODUCER, named `enqueue <queue>`, a child of whatever span is
  current in the producer (a web request, say). Its context is written into the job's envelope (`trace`, a
  W3C `traceparent`/`tracestate` carrier, or whatever propagator the application installed).
- **Each attempt** runs `perform` inside a span of kind CONSUMER named `perform <queue>`, whose parent is the
  enqueue span read back from the envelope and which also links to it, so a trace shows the request, the
  enqueue and every attempt of the job. The span is current while `perform` runs: spans the handler makes
  (HTTP clients, database drivers) are its children. An attempt that fails records the exception and sets
  the span's status to error; retries and dead letters say so in `forgejobs.outcome`.

Attributes follow the OpenTelemetry messaging conventions: `messaging.system` ("forgejobs"),
`messaging.destination.name` (the queue), `messaging.message.id` (the job id), `messaging.operation.type`
("create" on enqueue, "process" around perform), `messaging.operation.name` ("enqueue", "perform"), plus
`forgejobs.job.name`, `forgejobs.job.attempt` and, on the consumer span, `forgejobs.outcome`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .envelope import Envelope

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ModuleNotFoundError:  # forgejobs[otel] not installed: tracing is off
    trace = None  # type: ignore[assignment]

__all__ = [
    "SYSTEM",
    "enabled",
    "enqueue_carrier",
    "outcome",
    "perform_span",
    "record_exception",
    "use_tracer_provider",
]

SYSTEM = "forgejobs"
_SCOPE = "forgejobs"
_provider: Any = None  # set by use_tracer_provider; None: OpenTelemetry's global provider


def enabled() -> bool:
    """True when opentelemetry-api is installed and a tracer provider is configured (the global one, or
    one given to `use_tracer_provider`)."""
    if trace is None:
        return False
    if _provider is not None:
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextmanager
def use_tracer_provider(provider: Any) -> Iterator[Any]:
    """Trace forgejobs' spans with `provider` instead of the global one while the block runs (in every
    thread): for tests, and for applications that keep forgejobs' spans apart."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield provider
    finally:
        _provider = previous


def _tracer() -> Any:
    return (_provider or trace.get_tracer_provider()).get_tracer(_SCOPE)


def enqueue_carrier(queue: str, name: str, job_id: str) -> str:
    """Make the enqueue span of one job and return the envelope's `"trace"` member for it (a JSON fragment
    starting with a comma, to append to the envelope's other members), or "" when tracing is off."""
    if not enabled():
        return ""
    tracer = _tracer()
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "messaging.operation.type": "create",
        "messaging.operation.name": "enqueue",
        "forgejobs.job.name": name,
    }
    with tracer.start_as_current_span(f"enqueue {queue}", kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return f',"trace":{json.dumps(carrier, separators=(",", ":"))}' if carrier else ""


@contextmanager
def perform_span(envelope: Envelope, queue: str) -> Iterator[Any]:
    """The consumer span around one attempt; yields it (None when tracing is off). The caller reports the
    outcome with `outcome(span, word, error)`."""
    if not enabled():
        yield None
        return
    tracer = _tracer()
    parent = propagate.extract(envelope.trace) if envelope.trace else None
    links = []
    if parent is not None:
        producer = trace.get_current_span(parent).get_span_context()
        if producer.is_valid:
            links.append(Link(producer))
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.message.id": envelope.id,
        "messaging.operation.type": "process",
        "messaging.operation.name": "perform",
        "forgejobs.job.name": envelope.name,
        "forgejobs.job.attempt": envelope.attempt,
    }
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with tracer.start_as_current_span(
            f"perform {queue}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span
    finally:
        if token is not None:
            otel_context.detach(token)


def outcome(span: Any, word: str, error: str | None = None) -> None:
    """Say how the attempt ended on its span: `forgejobs.outcome` (succeeded, retry, dead_lettered,
    cancelled, aborted, rate_limited) and, when it failed, an error status with the error's text."""
    if span is None:
        return
    span.set_attribute("forgejobs.outcome", word)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    elif word == "succeeded":
        span.set_status(Status(StatusCode.OK))


def record_exception(exc: BaseException) -> None:
    """Record `exc` on the current span (the attempt's, while perform runs); nothing when tracing is off."""
    if trace is not None and enabled():
        trace.get_current_span().record_exception(exc)
