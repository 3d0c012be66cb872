"""A loopback OTLP/HTTP trace receiver for the benchmark: decodes and counts what it is sent.

It stands in for an OpenTelemetry Collector's ``otlp`` receiver (http/protobuf on
``/v1/traces``): every export is parsed, as a collector would, and answered with an empty
``ExportTraceServiceResponse``. ``GET /count`` returns ``{"requests": n, "spans": m}``, so the
benchmark can show the traced target really exported its spans.

Usage: ``python bench/otlp_sink.py --port 4318``
"""

from __future__ import annotations

import argparse
import gzip

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

COUNTS = web.AppKey("counts", dict)
_EMPTY = ExportTraceServiceResponse().SerializeToString()


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    counts = request.app[COUNTS]
    counts["requests"] += 1
    counts["spans"] += sum(
        len(scope.spans) for rs in export.resource_spans for scope in rs.scope_spans
    )
    return web.Response(body=_EMPTY, content_type="application/x-protobuf")


async def count(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = {"requests": 0, "spans": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4318)
    args = p.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
