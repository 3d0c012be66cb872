"""The floor: a bare pass-through proxy for POST /v1/chat/completions.

A minimal pure-ASGI app served by uvicorn exactly like ``provenant serve`` (uvloop, httptools,
no access log, one worker). It forwards the request body byte for byte to
``{upstream}/chat/completions`` and returns the upstream's status, content type and body. No
auth, no parsing, no logging, no record: whatever Provenant costs above this is the price of the
gateway, not of Python + uvicorn + the HTTP client.

The upstream client is selectable so the benchmark can show why Provenant uses aiohttp:

* ``aiohttp`` (default): one shared ``ClientSession`` built like
  ``service/gateway/backends/openai.py:new_client_session``;
* ``httpx``: one shared ``httpx.AsyncClient`` with the same connection limit.

Run: ``python bench/bare_proxy.py --port 9000 --upstream http://127.0.0.1:8081/v1 [--client httpx]``
(or set ``BARE_PROXY_UPSTREAM`` / ``BARE_PROXY_CLIENT``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONNECTIONS = 256  # Provenant's default PROVENANT_UPSTREAM_CONNECTIONS


class _AiohttpClient:
    def __init__(self) -> None:
        import aiohttp

        # same construction as service.gateway.backends.openai.new_client_session
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )

    async def post(self, url: str, body: bytes) -> tuple[int, bytes, bytes]:
        async with self._session.post(
            url, data=body, headers={"Content-Type": "application/json", "User-Agent": "bare"}
        ) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "application/json")
            return resp.status, ctype.encode("latin-1"), raw

    async def close(self) -> None:
        await self._session.close()


class _HttpxClient:
    def __init__(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
            timeout=None,
            trust_env=False,
        )

    async def post(self, url: str, body: bytes) -> tuple[int, bytes, bytes]:
        resp = await self._client.post(
            url, content=body, headers={"Content-Type": "application/json"}
        )
        ctype = resp.headers.get("Content-Type", "application/json")
        return resp.status_code, ctype.encode("latin-1"), resp.content

    async def close(self) -> None:
        await self._client.aclose()


def make_app(upstream: str, client: str = "aiohttp") -> Callable[..., Awaitable[None]]:
    """The bare proxy as an ASGI callable."""
    if client not in ("aiohttp", "httpx"):
        raise ValueError(f"unknown client {client!r} (aiohttp or httpx)")
    target = upstream.rstrip("/") + "/chat/completions"
    state: dict[str, Any] = {}

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # the client must be created inside the server's event loop
                state["client"] = _AiohttpClient() if client == "aiohttp" else _HttpxClient()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if "client" in state:
                    await state["client"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def respond(send: Send, status: int, ctype: bytes, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await respond(send, 404, b"application/json", b'{"error":"not found"}')
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            status, ctype, body = await state["client"].post(target, b"".join(chunks))
        except Exception as exc:  # a benchmark floor: any upstream failure is a 502
            await respond(send, 502, b"text/plain", type(exc).__name__.encode())
            return
        await respond(send, status, ctype, body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--upstream", default=os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:8081/v1")
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default=os.environ.get("BARE_PROXY_CLIENT", "aiohttp"),
    )
    args = parser.parse_args()

    import uvicorn

    uvicorn.run(
        make_app(args.upstream, args.client),
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
