"""The outermost layer of every HTTP request: its SERVER span, its metrics, its ``traceparent``.

Pure ASGI (STYLE.md: ``BaseHTTPMiddleware`` breaks streaming), called by ``app.Gateway`` around
both the pure-ASGI chat path and the framework. The response's ``traceparent`` names the same
trace and span ids the audit record stores: the gateway's SERVER span when tracing, otherwise
the caller's own ``traceparent`` echoed back (the record then holds the caller's ids).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from service.lineage.records import parse_traceparent
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing, traceparent_of

App = Callable[[Scope, Receive, Send], Awaitable[None]]
UNMATCHED = "unmatched"
# probes and scrapes every few seconds: counted in the metrics, not traced
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class HttpObserver:
    """Times, counts and traces each request handed to ``observe``."""

    def __init__(self, tracing: Tracing, metrics: Metrics) -> None:
        self._tracing = tracing
        self._metrics = metrics

    async def observe(
        self, scope: Scope, receive: Receive, send: Send, app: App, route: str | None
    ) -> None:
        """Run ``app`` for one request. ``route`` is the route template when known before
        routing (the pure-ASGI chat path); otherwise the framework's matched route is read
        from the scope afterwards."""
        started = time.perf_counter()
        incoming: str | None = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                incoming = value.decode("latin-1")
                break
        span = token = None
        if self._tracing.enabled and scope["path"] not in _UNTRACED:
            span, token = self._tracing.start_server(scope, route, incoming)
            outgoing = traceparent_of(span)
        else:
            outgoing = incoming if incoming and parse_traceparent(incoming)[0] else None
        header = outgoing.encode("latin-1") if outgoing else None
        status = 500  # if the app fails before it starts a response

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if header is not None:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (b"traceparent", header)],
                    }
            await send(message)

        try:
            await app(scope, receive, send_observed)
        finally:
            if route is None:
                route = getattr(scope.get("route"), "path", None)
            self._metrics.observe_http(
                scope["method"], route or UNMATCHED, status, time.perf_counter() - started
            )
            if span is not None:
                self._tracing.end_server(
                    span, token, method=scope["method"], route=route, status=status
                )
