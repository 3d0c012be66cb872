"""The official openai SDK against a live gateway: same answers, provenance, readable record."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import openai
import pytest

from tests.conftest import TenantKeys
from tests.support.secrets import UPSTREAM_KEY
from tests.support.servers import GatewayServer, UpstreamServer

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the retention period for audit logs?"},
]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fetch_record(gateway: GatewayServer, key: str, audit_id: str) -> dict:
    resp = httpx.get(
        f"{gateway.url}/v1/audit/records/{audit_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def expected_prompt_hash() -> str:
    return sha256(json.dumps(MESSAGES, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def test_sync_answer_matches_upstream_and_is_recorded(
    gateway: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    with openai.OpenAI(base_url=upstream.base_url, api_key="unused") as direct:
        expected = direct.chat.completions.create(model="echo-1", messages=MESSAGES)
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as via:
        raw = via.chat.completions.with_raw_response.create(
            model="echo", messages=MESSAGES, user="patient-42"
        )
        got = raw.parse()

    assert got.choices[0].message.content == expected.choices[0].message.content
    provenance = got.model_extra["provenance"]
    assert provenance["route"] == "echo"
    assert raw.headers["x-provenant-audit-id"] == provenance["audit_id"]

    record = fetch_record(gateway, tenant.app, provenance["audit_id"])
    assert record["status"] == "ok"
    assert record["end_user"] == "patient-42"
    assert record["upstream_model"] == "echo-1"
    assert record["answer"] == got.choices[0].message.content
    assert record["answer_sha256"] == sha256(got.choices[0].message.content)
    assert record["prompt_sha256"] == expected_prompt_hash()
    assert record["prompt_tokens"] == got.usage.prompt_tokens
    assert record["completion_tokens"] == got.usage.completion_tokens
    assert record["total_tokens"] == got.usage.total_tokens
    assert record["stream"] is False


def test_async_client_answers_concurrently_each_with_its_own_record(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    async def run() -> list[openai.types.chat.ChatCompletion]:
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app)
        async with client:
            return await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model="echo", messages=[{"role": "user", "content": f"question {i}"}]
                    )
                    for i in range(20)
                ]
            )

    answers = asyncio.run(run())
    ids = {a.model_extra["provenance"]["audit_id"] for a in answers}
    assert len(ids) == 20
    for i, answer in enumerate(answers):
        assert answer.choices[0].message.content == f"Echo: question {i}"
        record = fetch_record(gateway, tenant.auditor, answer.model_extra["provenance"]["audit_id"])
        assert record["answer"] == f"Echo: question {i}"


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_answer_matches_and_ends_with_provenance(
    gateway: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys, include_usage: bool
) -> None:
    options = {"include_usage": True} if include_usage else None
    with openai.OpenAI(base_url=upstream.base_url, api_key="unused") as direct:
        expected = "".join(
            c.choices[0].delta.content or ""
            for c in direct.chat.completions.create(model="echo-1", messages=MESSAGES, stream=True)
            if c.choices
        )
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as via:
        chunks = list(
            via.chat.completions.create(
                model="echo", messages=MESSAGES, stream=True, stream_options=options
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected

    last = chunks[-1]
    assert last.choices == []
    provenance = last.model_extra["provenance"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert bool(usage_chunks) is include_usage

    record = fetch_record(gateway, tenant.auditor, provenance["audit_id"])
    assert record["stream"] is True
    assert record["status"] == "ok"
    assert record["answer"] == text
    assert record["answer_sha256"] == sha256(text)
    assert record["finish_reason"] == "stop"
    if include_usage:
        assert record["total_tokens"] == usage_chunks[0].usage.total_tokens
    else:
        assert record["total_tokens"] is None


def test_every_openai_parameter_reaches_the_upstream(
    gateway: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_policy",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as via:
        got = via.chat.completions.create(
            model="echo",
            messages=MESSAGES,
            tools=tools,
            tool_choice="auto",
            n=2,
            seed=7,
            temperature=0.2,
            top_p=0.9,
            max_tokens=50,
            response_format={"type": "text"},
            extra_body={"vendor_option": {"beam": 3}},
        )
    sent = next(
        r["body"]
        for r in reversed(upstream.requests)
        if r["body"].get("seed") == 7 and r["body"].get("n") == 2
    )
    assert sent["model"] == "echo-1"
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "auto"
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.9 and sent["max_tokens"] == 50
    assert sent["response_format"] == {"type": "text"}
    assert sent["vendor_option"] == {"beam": 3}
    assert sent["messages"] == MESSAGES
    # the client's Provenant key never reaches the upstream
    assert all(tenant.app not in str(r["authorization"]) for r in upstream.requests)
    assert len(got.choices) == 2
    assert got.choices[0].message.tool_calls[0].function.name == "lookup_policy"

    record = fetch_record(gateway, tenant.app, got.model_extra["provenance"]["audit_id"])
    assert record["params"]["seed"] == 7 and record["params"]["tools"] == tools
    assert len(record["choices"]) == 2
    assert record["finish_reason"] == "tool_calls"


def test_models_lists_routes(gateway: GatewayServer, tenant: TenantKeys) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as via:
        names = {m.id for m in via.models.list()}
    assert {"echo", "fail", "drip"} <= names


def test_the_routes_upstream_key_goes_upstream_and_nowhere_else(
    gateway: GatewayServer, upstream: UpstreamServer, tenant: TenantKeys
) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as via:
        got = via.chat.completions.create(model="keyed", messages=MESSAGES)
    sent = upstream.requests[-1]
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"  # read from the env at call time
    record = fetch_record(gateway, tenant.auditor, got.model_extra["provenance"]["audit_id"])
    assert UPSTREAM_KEY not in str(record) and tenant.app not in str(record)
    # the session's database and logs are scanned for it at the end (tests/conftest.py)
