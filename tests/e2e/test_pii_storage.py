"""With the healthcare bundle active, no personal data a prompt carries reaches the database or
the logs: every table is scanned after answers (plain and streamed) that carried and echoed
each kind of identifier."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import MetaData, create_engine, select

from service.app import create_app
from service.config import OpenAIRoute, RoutesFile
from service.integrity.verify import verify
from tests.conftest import TenantKeys, make_settings
from tests.support.servers import GatewayServer, UpstreamServer

HEALTHCARE = Path(__file__).resolve().parents[2] / "policies" / "healthcare.yaml"

# each kind as a patient would type it, and the forms it could be stored in
PII = {
    "email": ["maria.gonzalez@clinic-example.org"],
    "phone": ["+1 415 555 2671", "14155552671", "4155552671"],
    "national_id (US SSN)": ["536-90-4399", "536904399"],
    "national_id (NHS)": ["943 476 5919", "9434765919"],
    "payment_card": ["4111 1111 1111 1111", "4111111111111111"],
    "iban": ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000"],
}
PROMPTS = [
    "My email is maria.gonzalez@clinic-example.org, please send the lab results.",
    "Call me back on +1 415 555 2671 about the appointment.",
    "My SSN is 536-90-4399 for the insurance claim.",
    "NHS number 943 476 5919, what is my next vaccination?",
    "Charge the copay to 4111 1111 1111 1111.",
    "Refund to IBAN DE89 3704 0044 0532 0130 00 please.",
]


@pytest.fixture
def clinic(database_url: str, upstream: UpstreamServer, tmp_path: Path) -> Iterator[GatewayServer]:
    settings = make_settings(database_url, tmp_path, seal_interval_s=0.2, policy_bundle=HEALTHCARE)
    routes = RoutesFile(
        routes=[OpenAIRoute(name="clinic", upstream=upstream.base_url, upstream_model="echo-1")]
    )
    server = GatewayServer(create_app(settings, routes)).start()
    yield server
    server.stop()


def test_no_identifier_is_stored_or_logged(
    clinic: GatewayServer,
    tenant: TenantKeys,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    audit_ids = []
    with openai.OpenAI(base_url=f"{clinic.url}/v1", api_key=tenant.app, max_retries=0) as sdk:
        for prompt in PROMPTS:
            messages = [
                {"role": "system", "content": "You are a clinic assistant."},
                {"role": "user", "content": [{"type": "text", "text": prompt}]},
            ]
            answer = sdk.chat.completions.create(model="clinic", messages=messages)
            # the app gets its answer unchanged: content_mode governs storage only
            assert prompt in (answer.choices[0].message.content or "")
            flagged = {d["id"]: d for d in answer.model_extra["provenance"]["policies"]}
            assert flagged["phi-in-prompt"]["outcome"] == "flagged"
            audit_ids.append(answer.model_extra["provenance"]["audit_id"])
            chunks = list(
                sdk.chat.completions.create(
                    model="clinic",
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert prompt in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 20
        while (report := verify(engine, origin="provenant.local/audit-log")).unsigned_tail:
            assert time.monotonic() < deadline, "log not sealed"
            time.sleep(0.2)
        assert report.ok, report.problems
        metadata = MetaData()
        metadata.reflect(engine)
        assert {"audit_records", "policy_decisions", "log_pending", "admin_events"} <= set(
            metadata.tables
        )
        scanned = 0
        stored_prompts = []
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    text = " ".join(str(v) for v in row)
                    scanned += 1
                    for kind, forms in PII.items():
                        for form in forms:
                            assert form not in text, f"{kind} stored in {table.name}: {row}"
                    if table.name == "audit_records" and str(row.id) in {
                        a.replace("-", "") for a in audit_ids
                    } | set(audit_ids):
                        stored_prompts.append(row.prompt)
    finally:
        engine.dispose()
    assert scanned > len(PROMPTS) * 2
    # what is stored is the prompt with each identifier replaced by its kind
    assert len(stored_prompts) == len(PROMPTS)
    assert any("[EMAIL]" in p for p in stored_prompts)
    assert any("[PAYMENT_CARD]" in p for p in stored_prompts)
    assert any("[IBAN]" in p for p in stored_prompts)
    for kind, forms in PII.items():
        for form in forms:
            assert form not in caplog.text, f"{kind} logged"
