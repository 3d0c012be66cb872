"""Erasure, legal holds, retention and the audit of reads, on SQLite and PostgreSQL, through the
gateway's API and the CLI: after erasure no table holds the subject's text and the log still
verifies; a hold refuses erasure and retention; every read of a record is itself on the log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.config import OpenAIRoute, RoutesFile
from service.db.base import utcnow
from service.integrity.verify import Report, verify
from service.lineage.models import AdminEvent, AuditRecord
from service.privacy.erasure import run_retention
from tests.conftest import TenantKeys, make_settings
from tests.support.servers import GatewayServer, UpstreamServer

ORIGIN = "provenant.local/audit-log"
RETENTION_BUNDLE = {
    "bundle": "retention-test",
    "policies": [
        {
            "id": "keep-a-day",
            "description": "one day",
            "stage": "pre",
            "check": {"type": "retention", "name": "short", "days": 1, "legal_basis": "test"},
        },
        {
            "id": "keep-a-year",
            "description": "a year on the long route",
            "applies_to": {"routes": ["long"]},
            "stage": "pre",
            "check": {"type": "retention", "name": "year", "days": 365, "legal_basis": "test"},
        },
    ],
}


@pytest.fixture
def gw(database_url: str, upstream: UpstreamServer, tmp_path: Path) -> tuple[GatewayServer, Engine]:
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(yaml.safe_dump(RETENTION_BUNDLE))
    settings = make_settings(database_url, tmp_path, seal_interval_s=0.2, policy_bundle=bundle)
    routes = RoutesFile(
        routes=[
            OpenAIRoute(name=name, upstream=upstream.base_url, upstream_model="echo-1")
            for name in ("short", "long")
        ]
    )
    server = GatewayServer(create_app(settings, routes)).start()
    engine = create_engine(database_url)
    yield server, engine  # type: ignore[misc]
    server.stop()
    engine.dispose()


def ask(gw: GatewayServer, key: str, text_: str, user: str, route: str = "short") -> str:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model=route, messages=[{"role": "user", "content": text_}], user=user
        )
    return str(answer.model_extra["provenance"]["audit_id"])


def admin_post(gw: GatewayServer, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})


def sealed_report(engine: Engine) -> Report:
    deadline = time.monotonic() + 20
    while True:
        report = verify(engine, origin=ORIGIN)
        if not report.problems and report.pending == 0 and report.unsigned_tail == 0:
            return report
        assert time.monotonic() < deadline, report.problems
        time.sleep(0.2)


def stored_anywhere(engine: Engine, needle: str) -> list[str]:
    """Tables where some row holds ``needle`` in any column."""
    metadata = MetaData()
    metadata.reflect(engine)
    hits = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                if needle in " ".join(str(v) for v in row):
                    hits.append(table.name)
                    break
    return hits


def events(engine: Engine, action: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            select(AdminEvent).where(AdminEvent.action == action).order_by(AdminEvent.id)
        ).all()


def test_erasure_leaves_no_trace_of_the_text_and_the_log_verifies(
    gw: tuple[GatewayServer, Engine], tenant: TenantKeys
) -> None:
    server, engine = gw
    subject = f"patient-{uuid.uuid4().hex[:6]}"
    secret = f"my diagnosis code is {uuid.uuid4().hex}"
    other = f"unrelated question {uuid.uuid4().hex}"
    erased_ids = [ask(server, tenant.app, f"{secret} #{i}", subject) for i in range(3)]
    kept = ask(server, tenant.app, other, "someone-else")
    assert stored_anywhere(engine, secret) == ["audit_records"]

    resp = admin_post(
        server, tenant.app, "/v1/admin/erasure", {"subject": subject, "reason": "GDPR Art. 17"}
    )
    assert resp.status_code == 403  # apps may not erase
    resp = admin_post(
        server, tenant.admin, "/v1/admin/erasure", {"subject": subject, "reason": "GDPR Art. 17"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"subject": subject, "erased": 3, "already_erased": 0}

    assert stored_anywhere(engine, secret) == []
    assert stored_anywhere(engine, other) == ["audit_records"]  # the other subject is untouched
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditRecord).where(AuditRecord.id.in_([uuid.UUID(i) for i in erased_ids]))
        ).all()
    assert len(rows) == 3
    for row in rows:
        assert (row.prompt, row.answer, row.choices, row.content_salt) == (None,) * 4
        assert (row.prompt_sha256, row.answer_sha256) == (None, None)
        assert row.answer_salted_sha256 is not None and row.leaf_sha256 is not None
    (event,) = [e for e in events(engine, "erasure") if e.target == f"subject:{subject}"]
    assert sorted(event.detail["records"]) == sorted(erased_ids)
    assert event.detail["reason"] == "GDPR Art. 17" and event.actor.startswith("key:")
    report = sealed_report(engine)
    assert report.ok and report.entries >= 5
    # a second erasure finds nothing left to erase
    again = admin_post(
        server, tenant.admin, "/v1/admin/erasure", {"subject": subject, "reason": "x"}
    )
    assert again.json() == {"subject": subject, "erased": 0, "already_erased": 3}
    assert kept


def test_a_hold_refuses_erasure_until_released(
    gw: tuple[GatewayServer, Engine], tenant: TenantKeys, database_url: str, tmp_path: Path
) -> None:
    server, engine = gw
    subject = f"client-{uuid.uuid4().hex[:6]}"
    secret = f"account detail {uuid.uuid4().hex}"
    audit_id = ask(server, tenant.app, secret, subject)
    hold = admin_post(
        server,
        tenant.admin,
        "/v1/admin/holds",
        {"scope": "record", "value": audit_id, "reason": "litigation 2026-17"},
    )
    assert hold.status_code == 201, hold.text
    listed = httpx.get(
        f"{server.url}/v1/admin/holds", headers={"Authorization": f"Bearer {tenant.auditor}"}
    ).json()["data"]
    assert [h["id"] for h in listed] == [hold.json()["id"]]

    refused = admin_post(
        server, tenant.admin, "/v1/admin/erasure", {"subject": subject, "reason": "r"}
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "legal_hold"
    assert hold.json()["id"] in refused.json()["error"]["message"]

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROVENANT_DATABASE_URL": database_url,
        "PROVENANT_DATA_DIR": str(tmp_path),
    }

    def erase_cli() -> subprocess.CompletedProcess[str]:
        """``provenant erase`` in its own process, as an operator runs it."""
        argv = ["erase", "--subject", subject, "--reason", "r", "--tenant", tenant.tenant]
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    cli = erase_cli()
    assert cli.returncode == 1 and "legal hold" in cli.stderr and "Traceback" not in cli.stderr
    assert stored_anywhere(engine, secret) == ["audit_records"]

    released = admin_post(
        server,
        tenant.admin,
        f"/v1/admin/holds/{hold.json()['id']}/release",
        {"reason": "case closed"},
    )
    assert released.status_code == 200 and released.json()["released_by"].startswith("key:")
    cli = erase_cli()
    assert cli.returncode == 0, cli.stderr
    assert "erased the content of 1 record(s)" in cli.stdout
    assert stored_anywhere(engine, secret) == []
    assert {e.action for e in events(engine, "hold.placed")} == {"hold.placed"}
    assert any(e.target == f"hold:{hold.json()['id']}" for e in events(engine, "hold.released"))
    assert sealed_report(engine).ok


def test_retention_erases_past_due_content_except_held_and_the_floor(
    gw: tuple[GatewayServer, Engine], tenant: TenantKeys
) -> None:
    server, engine = gw
    subject = f"user-{uuid.uuid4().hex[:6]}"
    due = ask(server, tenant.app, f"short-lived {uuid.uuid4().hex}", subject)
    held = ask(server, tenant.app, f"held {uuid.uuid4().hex}", f"{subject}-held")
    long_kept = ask(server, tenant.app, f"long {uuid.uuid4().hex}", subject, route="long")
    placed = admin_post(
        server,
        tenant.admin,
        "/v1/admin/holds",
        {"scope": "subject", "value": f"{subject}-held", "reason": "audit"},
    )
    assert placed.status_code == 201, placed.text
    with engine.connect() as conn:
        classes = dict(
            conn.execute(
                select(AuditRecord.id, AuditRecord.retention_class).where(
                    AuditRecord.id.in_([uuid.UUID(due), uuid.UUID(long_kept)])
                )
            ).all()
        )
    assert classes == {uuid.UUID(due): "short", uuid.UUID(long_kept): "year"}
    sessions = sessionmaker(engine)
    tomorrow = utcnow() + timedelta(days=2)
    # the floor (e.g. the EU AI Act's six months) protects even past-due records
    floored = run_retention(sessions, floor_days=183, actor="test", now=tomorrow)
    assert floored.erased == 0
    dry = run_retention(sessions, floor_days=0, actor="test", now=tomorrow, dry_run=True)
    assert dry.erased >= 1
    done = run_retention(sessions, floor_days=0, actor="test", now=tomorrow)
    assert done.erased >= 1
    with engine.connect() as conn:
        salts = dict(
            conn.execute(
                select(AuditRecord.id, AuditRecord.content_salt).where(
                    AuditRecord.id.in_([uuid.UUID(x) for x in (due, held, long_kept)])
                )
            ).all()
        )
    assert salts[uuid.UUID(due)] is None  # past its day: erased
    assert salts[uuid.UUID(held)] is not None  # past its day but under a hold
    assert salts[uuid.UUID(long_kept)] is not None  # a year's class
    erased_events = [e for e in events(engine, "retention.erased") if due in e.detail["records"]]
    assert len(erased_events) == 1 and erased_events[0].detail["classes"] == ["short"]
    assert sealed_report(engine).ok
    # through the API, now: nothing is due yet
    resp = admin_post(server, tenant.admin, "/v1/admin/retention/run", {"dry_run": True})
    assert resp.status_code == 200 and resp.json()["would_erase"] == 0


def test_shortening_a_records_retention_is_detected(
    gw: tuple[GatewayServer, Engine], tenant: TenantKeys
) -> None:
    server, engine = gw
    audit_id = ask(server, tenant.app, "keep me", "someone")
    sealed_report(engine)
    rid = uuid.UUID(audit_id)
    with engine.connect() as conn:
        original = conn.execute(
            select(AuditRecord.retain_until).where(AuditRecord.id == rid)
        ).scalar_one()
    assert original is not None

    def set_retain_until(value: Any) -> None:
        """As an attacker: on PostgreSQL with the triggers disabled (superuser)."""
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(
                text("UPDATE audit_records SET retain_until = :t WHERE id = :id"),
                {"t": value, "id": rid.hex if conn.dialect.name == "sqlite" else rid},
            )

    set_retain_until(utcnow() - timedelta(days=400))
    try:
        report = verify(engine, origin=ORIGIN)
        assert {(p.kind, p.entry_id) for p in report.problems} == {("altered", audit_id)}
    finally:
        set_retain_until(original)  # the database is shared with the other tests
    assert verify(engine, origin=ORIGIN).ok


def test_reading_the_log_is_on_the_log(
    gw: tuple[GatewayServer, Engine], tenant: TenantKeys
) -> None:
    server, engine = gw
    audit_id = ask(server, tenant.app, "read me", "reader-test")
    auth = {"Authorization": f"Bearer {tenant.auditor}"}
    assert httpx.get(f"{server.url}/v1/audit/records/{audit_id}", headers=auth).status_code == 200
    listing = httpx.get(
        f"{server.url}/v1/audit/records", params={"end_user": "reader-test"}, headers=auth
    )
    assert listing.status_code == 200
    prefix = tenant.auditor.split("_")[1] if "_" in tenant.auditor else None
    (read,) = [e for e in events(engine, "record.read") if e.target == f"record:{audit_id}"]
    assert read.actor.startswith("key:") and (prefix is None or prefix in read.actor)
    listed = [
        e
        for e in events(engine, "records.listed")
        if e.detail["filters"]["end_user"] == "reader-test"
    ]
    assert len(listed) == 1 and listed[0].detail["returned"] == 1
    assert sealed_report(engine).ok
    with Session(engine) as session:
        assert session.get(AuditRecord, uuid.UUID(audit_id)) is not None
