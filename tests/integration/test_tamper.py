"""Tamper-evidence: an attacker with write access to the database (triggers disabled, as a
superuser would) edits, deletes, inserts and swaps rows; ``provenant verify`` names each one.

Every test builds a fresh store, fills it through the real write path (AuditWriter + Exchange,
the key service's admin events), seals it with the real sealer in two checkpoints, checks that
it verifies, then tampers with plain SQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.documents.models import Chunk, Document, DocumentVersion
from service.gateway.writer import AuditWriter
from service.integrity import leafscan, signing
from service.integrity.canonical import digest
from service.integrity.log import Sealer
from service.integrity.verify import Report, verify
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange
from service.provenance.models import ModelSnapshot
from service.tenancy.auth import Principal
from service.tenancy.models import ApiKey, Role, Tenant
from service.tenancy.service import create_key
from tests.support.db import create_postgres_database, drop_postgres_database, postgres_admin_url

ORIGIN = "test.provenant/log"


@dataclass
class Store:
    url: str
    engine: Engine
    records: list[uuid.UUID]  # in log order
    rag_record: uuid.UUID  # has retrievals and policy decisions
    model_record: uuid.UUID  # served by a model snapshot
    snapshot_id: uuid.UUID
    signer: signing.Signer

    def verify(self) -> Report:
        """The report, from the native walk where it runs (SQLite), which must name exactly
        what the Python walk names."""
        report = verify(self.engine, origin=ORIGIN)
        python = verify(self.engine, origin=ORIGIN, native=False)
        assert _named(report) == _named(python)
        assert (report.entries, report.tree_size) == (python.entries, python.tree_size)
        native = self.engine.dialect.name == "sqlite" and leafscan.available()
        assert (report.natively_confirmed > 0) == native  # the C scan really ran (or not)
        return report

    def attack(self, *statements: str, **params: object) -> None:
        """Run SQL as an attacker: on PostgreSQL with triggers disabled (superuser)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL session_replication_role = replica"))
            for sql in statements:
                conn.execute(text(sql), params)


def _named(report: Report) -> list[tuple[str, str | None, int | None, str]]:
    return [(p.kind, p.entry_id, p.index, p.detail) for p in report.problems]


def _hex(conn: Connection, value: uuid.UUID) -> str:
    """How a UUID is bound in raw SQL on this backend (SQLite stores 32 hex digits)."""
    return value.hex if conn.dialect.name == "sqlite" else str(value)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from _store(request.param, tmp_path)


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[Store]:
    yield from _store("postgres", tmp_path)


def _store(backend: str, tmp_path: Path) -> Iterator[Store]:
    admin = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'tamper.db'}"
        upgrade(url)
    else:
        admin = postgres_admin_url()
        if admin is None:
            pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
        url = create_postgres_database(admin)
    engine = make_engine(url)
    try:
        yield _fill(url, engine, tmp_path)
    finally:
        engine.dispose()
        if admin is not None:
            drop_postgres_database(admin, url)


def _fill(url: str, engine: Engine, tmp_path: Path) -> Store:
    signer = signing.Signer(signing.load_or_create(tmp_path / "k.pem", create=True), ORIGIN)
    sealer = Sealer(engine, signer)
    sealer.register_key()
    with Session(engine) as session:
        create_key(session, tenant="acme", role="app")  # an admin event
        snapshot = {"name": "support-bot", "version": "7", "run_id": "abc", "datasets": ["t"]}
        snap = ModelSnapshot(
            name="support-bot",
            version="7",
            run_id="abc",
            content=snapshot,
            snapshot_sha256=digest(snapshot),
        )
        session.add(snap)
        session.commit()
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).one()
        principal = Principal(key.id, key.prefix, tenant.id, tenant.name, Role.app)
        snapshot_id = snap.id
        version_id, chunks = _registered_chunks(session, tenant.id)
    writer = AuditWriter(engine)
    writer.start()
    ids: list[uuid.UUID] = []
    rag = model = uuid.uuid4()
    try:
        for i in range(12):
            body = {"model": "echo", "messages": [{"role": "user", "content": f"q{i}"}]}
            ex = Exchange(principal, "echo", "openai", body, "echo-1")
            if i == 3:
                rag = ex.id
                ex.retrievals = [
                    {"rank": r, "chunk_id": chunks[r][0], "source_ref": f"doc-{r}",
                     "score": 0.9 - r / 10, "cited": r == 0, "verified": True,
                     "document_version_id": version_id, "chunk_sha256": chunks[r][1],
                     "superseded": False, "reported": None}
                    for r in range(3)
                ]  # fmt: skip
                ex.decisions = [
                    {"record_id": ex.id, "policy_id": "require-citations", "stage": "post",
                     "policy_sha256": "a" * 64, "outcome": "pass", "detail": {"cited": 1}}
                ]  # fmt: skip
            if i == 8:
                model = ex.id
                ex.model_snapshot_id, ex.model_snapshot_sha256 = snapshot_id, digest(snapshot)
            choices = [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}}]
            row = ex.record_row(
                status=RecordStatus.ok, http_status=200, latency_ms=1.5 + i, choices=choices
            )
            writer.submit(ex.rows(row)).result(timeout=10)
            ids.append(ex.id)
            if i == 5:
                sealer.seal()  # the first checkpoint: the event and 6 records
    finally:
        writer.stop()
    sealer.seal()
    return Store(url, engine, ids, rag, model, snapshot_id, signer)


def _registered_chunks(
    session: Session, tenant_id: uuid.UUID
) -> tuple[uuid.UUID, list[tuple[uuid.UUID, str]]]:
    """A registered document version with three chunks, as ingestion leaves them."""
    now = datetime.now(UTC)
    doc = Document(
        id=uuid.uuid4(), tenant_id=tenant_id, collection="hr", source_uri="leave.md", created_at=now
    )
    version = DocumentVersion(
        id=uuid.uuid4(), document_id=doc.id, version=1, title="Leave", content_sha256="c" * 64,
        media_type="text/markdown", size_bytes=10, chunk_count=3, ingested_at=now,
    )  # fmt: skip
    texts = ["25 days of leave.", "Carry over 5 days.", "Ask your manager."]
    chunks = [
        Chunk(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            version_id=version.id,
            ordinal=i,
            page=None,
            char_start=0,
            char_end=len(t),
            text=t,
            text_sha256=hashlib.sha256(t.encode()).hexdigest(),
        )
        for i, t in enumerate(texts)
    ]
    session.add(doc)
    session.flush()
    session.add(version)
    session.flush()
    session.add_all(chunks)
    out = version.id, [(c.id, c.text_sha256) for c in chunks]
    session.commit()
    return out


def kinds(report: Report) -> set[tuple[str, str | None]]:
    return {(p.kind, p.entry_id) for p in report.problems}


def test_an_untouched_log_verifies(store: Store) -> None:
    report = store.verify()
    assert report.ok, report.problems
    assert report.tree_size == 13 and report.checkpoints == 2 and report.latest_checkpoint == 13
    if store.engine.dialect.name == "sqlite":  # the event, the RAG and model records included
        assert report.natively_confirmed == 13


def test_a_changed_answer_is_named(store: Store) -> None:
    victim = store.records[4]
    with store.engine.connect() as conn:
        rid = _hex(conn, victim)
    store.attack("UPDATE audit_records SET answer = 'forged' WHERE id = :id", id=rid)
    assert kinds(store.verify()) == {("altered", str(victim))}


def test_an_answer_changed_with_its_hashes_recomputed_is_still_named(store: Store) -> None:
    victim = store.records[2]
    with store.engine.connect() as conn:
        rid = _hex(conn, victim)
        salt = conn.execute(
            text("SELECT content_salt FROM audit_records WHERE id = :id"), {"id": rid}
        ).scalar()
    forged = "forged"
    store.attack(
        "UPDATE audit_records SET answer = :a, answer_sha256 = :p, answer_salted_sha256 = :s "
        "WHERE id = :id",
        a=forged,
        p=hashlib.sha256(forged.encode()).hexdigest(),
        s=hashlib.sha256(bytes.fromhex(salt) + forged.encode()).hexdigest(),
        id=rid,
    )
    assert kinds(store.verify()) == {("altered", str(victim))}


def test_a_changed_retrieval_score_is_named(store: Store) -> None:
    with store.engine.connect() as conn:
        rid = _hex(conn, store.rag_record)
    store.attack("UPDATE retrievals SET score = 0.99 WHERE record_id = :id AND rank = 2", id=rid)
    assert kinds(store.verify()) == {("altered", str(store.rag_record))}


def test_a_retrieval_made_to_look_current_or_pointed_at_other_text_is_named(
    store: Store,
) -> None:
    with store.engine.connect() as conn:
        rid = _hex(conn, store.rag_record)
    store.attack(
        "UPDATE retrievals SET superseded = true, chunk_sha256 = :h WHERE record_id = :id "
        "AND rank = 1",
        h="0" * 64,
        id=rid,
    )
    assert kinds(store.verify()) == {("altered", str(store.rag_record))}


def test_a_chunk_whose_text_changed_is_named_with_the_record_that_was_given_it(
    store: Store,
) -> None:
    with store.engine.connect() as conn:
        rid = _hex(conn, store.rag_record)
        chunk_id = conn.execute(
            text("SELECT chunk_id FROM retrievals WHERE record_id = :id AND rank = 0"), {"id": rid}
        ).scalar_one()
    store.attack("UPDATE chunks SET text = 'Employees get 40 days.' WHERE id = :c", c=chunk_id)
    problems = store.verify().problems
    assert {(p.kind, p.entry_id) for p in problems} == {
        ("altered", None),
        ("altered", str(store.rag_record)),
    }
    # recomputing the chunk's own hash does not hide it: the record's leaf kept the old one
    forged = hashlib.sha256(b"Employees get 40 days.").hexdigest()
    store.attack("UPDATE chunks SET text_sha256 = :h WHERE id = :c", h=forged, c=chunk_id)
    assert kinds(store.verify()) == {("altered", str(store.rag_record))}


def test_a_changed_policy_outcome_is_named(store: Store) -> None:
    with store.engine.connect() as conn:
        rid = _hex(conn, store.rag_record)
    store.attack("UPDATE policy_decisions SET outcome = 'fail' WHERE record_id = :id", id=rid)
    assert kinds(store.verify()) == {("altered", str(store.rag_record))}


def test_a_changed_model_snapshot_is_named_with_the_records_it_served(store: Store) -> None:
    with store.engine.connect() as conn:
        sid = _hex(conn, store.snapshot_id)
        content = '{"name": "support-bot", "version": "6", "run_id": "abc", "datasets": ["t"]}'
    store.attack("UPDATE model_snapshots SET content = :c WHERE id = :id", c=content, id=sid)
    assert kinds(store.verify()) == {
        ("altered", str(store.snapshot_id)),
        ("altered", str(store.model_record)),
    }


def test_a_deleted_record_is_named(store: Store) -> None:
    victim = store.records[7]
    with store.engine.connect() as conn:
        rid = _hex(conn, victim)
    store.attack("DELETE FROM audit_records WHERE id = :id", id=rid)
    assert kinds(store.verify()) == {("deleted", str(victim))}


def test_a_forged_record_is_named(store: Store) -> None:
    forged = uuid.uuid4()
    with store.engine.connect() as conn:
        src, fid = _hex(conn, store.records[0]), _hex(conn, forged)
    cols = (
        "schema_version, tenant_id, api_key_id, end_user, route, route_kind, requested_model, "
        "upstream_model, response_model, status, http_status, error_code, error_message, stream, "
        "params, prompt, prompt_sha256, answer, answer_sha256, choices, content_salt, "
        "prompt_salted_sha256, answer_salted_sha256, choices_salted_sha256, finish_reason, "
        "prompt_tokens, completion_tokens, total_tokens, latency_ms, upstream_latency_ms, "
        "trace_id, span_id, model_snapshot_id, policy_bundle_sha256, created_at, completed_at, "
        "leaf_sha256"
    )
    store.attack(
        f"INSERT INTO audit_records (id, {cols}) SELECT :fid, {cols} FROM audit_records "
        "WHERE id = :src",
        fid=fid,
        src=src,
    )
    assert kinds(store.verify()) == {("inserted", str(forged))}


def test_two_swapped_log_entries_are_named(store: Store) -> None:
    a, b = store.records[7], store.records[9]  # both in the second checkpoint's range
    with store.engine.connect() as conn:
        rows = {
            r.entry_id: (r.idx, r.leaf_sha256)
            for r in conn.execute(
                text("SELECT idx, entry_id, leaf_sha256 FROM log_entries")
            ).mappings()
        }
        ia = next(v[0] for k, v in rows.items() if str(k).replace("-", "") == a.hex)
        ib = next(v[0] for k, v in rows.items() if str(k).replace("-", "") == b.hex)
    store.attack(
        "UPDATE log_entries SET idx = -1 WHERE idx = :ia",
        "UPDATE log_entries SET idx = :ia WHERE idx = :ib",
        "UPDATE log_entries SET idx = :ib WHERE idx = -1",
        ia=ia,
        ib=ib,
    )
    report = store.verify()
    named = kinds(report)
    assert ("reordered", str(a)) in named or ("reordered", str(b)) in named, named
    assert any(p.kind == "checkpoint" for p in report.problems)  # the signed root disagrees
    assert {k for k, _ in named} <= {"reordered", "checkpoint"}


def test_a_forged_checkpoint_signature_is_refused(store: Store) -> None:
    other = signing.Signer(signing.Ed25519PrivateKey.generate(), ORIGIN)
    body = signing.checkpoint_body(ORIGIN, 13, b"\x00" * 32)
    store.attack(
        "UPDATE checkpoints SET note = :n, root_sha256 = :r WHERE tree_size = 13",
        n=other.sign_note(body),
        r="00" * 32,
    )
    report = store.verify()
    assert any(p.kind == "signature" and "13" in p.detail for p in report.problems)


@pytest.mark.postgres
def test_postgres_triggers_refuse_edits_but_allow_erasure_which_still_verifies(
    postgres_store: Store,
) -> None:
    store = postgres_store
    victim = str(store.records[1])
    for sql in (
        "UPDATE audit_records SET answer = 'x' WHERE id = :id",
        "UPDATE audit_records SET status = 'ok', route = 'other' WHERE id = :id",
        "DELETE FROM audit_records WHERE id = :id",
        "DELETE FROM log_entries",
        "UPDATE checkpoints SET note = ''",
        "TRUNCATE retrievals",
        "UPDATE chunks SET text = 'forged'",
        "DELETE FROM document_versions",
        "UPDATE document_versions SET title = 'x'",
        "TRUNCATE documents CASCADE",
    ):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(sql), {"id": victim})
    # the erasure path: content and salt to NULL, nothing else
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_records SET prompt = NULL, answer = NULL, choices = NULL, "
                "prompt_sha256 = NULL, answer_sha256 = NULL, content_salt = NULL WHERE id = :id"
            ),
            {"id": victim},
        )
    report = store.verify()
    assert report.ok, report.problems


def test_verify_and_pack_commands_name_the_altered_record(store: Store, tmp_path: Path) -> None:

    env = {**os.environ, "PROVENANT_DATABASE_URL": store.url, "PROVENANT_LOG_ORIGIN": ORIGIN}
    env["PROVENANT_DATA_DIR"] = str(tmp_path / "data")

    def provenant(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = provenant("verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: 13 entries, 2 checkpoints")
    pack = tmp_path / "evidence.sqlite"
    made = provenant("pack", "--out", str(pack))
    assert made.returncode == 0, made.stderr
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signing.public_jwk(store.signer.public)]}))
    victim = store.records[5]
    with store.engine.connect() as conn:
        rid = _hex(conn, victim)
    store.attack("UPDATE audit_records SET status = 'upstream_error' WHERE id = :id", id=rid)
    bad = provenant("verify")
    assert bad.returncode == 1
    assert f"ALTERED: index 6 {victim}" in bad.stdout
    # the pack taken before the edit still verifies offline, with a pinned key
    offline = provenant("verify", "--pack", str(pack), "--jwks", str(jwks), "--json")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert json.loads(offline.stdout)["tree_size"] == 13
    # and refuses when the pinned key is not the log's
    stranger = signing.Signer(signing.Ed25519PrivateKey.generate(), ORIGIN)
    jwks.write_text(json.dumps({"keys": [signing.public_jwk(stranger.public)]}))
    refused = provenant("verify", "--pack", str(pack), "--jwks", str(jwks))
    assert refused.returncode == 1 and "SIGNATURE" in refused.stdout
