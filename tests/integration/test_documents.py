"""The document registry through its API: every format, versions, chunks as they were, bad
input refused with nothing half-ingested, SQL and Qdrant kept consistent, tenants apart."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from service.documents.index import VectorIndex
from service.documents.models import Chunk
from service.documents.sparse import query_vector
from service.lineage.models import AdminEvent
from service.tenancy.models import Tenant
from tests.conftest import TenantKeys, make_settings
from tests.support.documents import docx_bytes, get, html, pdf, upload
from tests.support.servers import GatewayServer

LEAVE_V1 = "# Leave policy\n\nEmployees accrue 25 days of paid leave per year.\n"
LEAVE_V2 = "# Leave policy\n\nEmployees accrue 28 days of paid leave per year.\n"


def index_of(gateway: GatewayServer) -> VectorIndex:
    index: VectorIndex = gateway.app.state.registry.indexes.get()
    return index


def tenant_id(sessions: sessionmaker[Session], name: str) -> uuid.UUID:
    with sessions() as session:
        return session.scalars(select(Tenant.id).where(Tenant.name == name)).one()


def documents(gateway: GatewayServer, key: str, **params: object) -> list[dict]:
    resp = get(gateway.url, key, "/v1/documents", **params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_every_format_is_ingested_with_pages_titles_and_chunks(
    rag_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    files = {
        "leave.md": LEAVE_V1.encode(),
        "notes.txt": b"Security badges must be worn at all times.\r\nVisitors sign in.",
        "remote.html": html("Remote work", "<h1>Remote</h1><p>Work <b>remotely</b> 2 days.</p>"),
        "travel.docx": docx_bytes("Travel policy", ["Book economy class."], [["City", "Cap"]]),
        "handbook.pdf": pdf(["Welcome to the company.", "Expenses are refunded monthly."]),
    }
    for name, data in files.items():
        resp = upload(rag_gateway.url, tenant.admin, "hr", name, data)
        assert resp.status_code == 201, resp.text
        assert resp.json()["status"] == "created"

    by_uri = {d["source_uri"]: d for d in documents(rag_gateway, tenant.auditor)}
    assert set(by_uri) == set(files)
    titles = {uri: d["title"] for uri, d in by_uri.items()}
    assert titles == {
        "leave.md": "Leave policy",
        "notes.txt": "notes.txt",
        "remote.html": "Remote work",
        "travel.docx": "Travel policy",
        "handbook.pdf": "handbook.pdf",
    }
    pdf_version = by_uri["handbook.pdf"]["latest_version"]
    assert pdf_version["pages"] == 2 and pdf_version["media_type"] == "application/pdf"
    assert pdf_version["content_sha256"] == hashlib.sha256(files["handbook.pdf"]).hexdigest()
    assert by_uri["leave.md"]["latest_version"]["pages"] is None
    # the html's script and style are not text
    versions = get(
        rag_gateway.url, tenant.app, f"/v1/documents/{by_uri['remote.html']['id']}/versions"
    ).json()["data"]
    assert versions[0]["chunk_count"] == 1 and versions[0]["current"] is True


def test_reingesting_is_a_no_op_when_unchanged_and_a_new_version_when_changed(
    rag_gateway: GatewayServer, tenant: TenantKeys, sessions: sessionmaker[Session]
) -> None:
    first = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", LEAVE_V1.encode())
    assert first.status_code == 201
    same = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", LEAVE_V1.encode())
    assert same.status_code == 200 and same.json()["status"] == "unchanged"
    changed = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", LEAVE_V2.encode())
    assert changed.status_code == 201, changed.text
    body = changed.json()
    assert body["status"] == "new_version" and body["superseded_version"] == 1
    doc_id = body["document"]["id"]
    assert body["document"]["latest_version"]["version"] == 2

    versions = get(rag_gateway.url, tenant.app, f"/v1/documents/{doc_id}/versions").json()["data"]
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    assert versions[0]["superseded_by"] == versions[1]["id"]
    assert versions[0]["superseded_at"] is not None

    # both versions' chunks stay in SQL; only version 2's are searchable
    tid = tenant_id(sessions, tenant.tenant)
    active = index_of(rag_gateway).active_versions("hr", tid)
    assert active == {versions[1]["id"]: 1}
    assert index_of(rag_gateway).count("hr", version_id=versions[0]["id"]) == 1
    # the change entered the integrity log as admin events
    with sessions() as session:
        events = session.scalars(
            select(AdminEvent).where(
                AdminEvent.tenant_id == tid, AdminEvent.action == "document.ingested"
            )
        ).all()
    assert sorted(e.detail["version"] for e in events) == [1, 2]


def test_json_text_ingestion_is_searchable_only_by_its_tenant(
    rag_gateway: GatewayServer,
    tenant: TenantKeys,
    other_tenant: TenantKeys,
    sessions: sessionmaker[Session],
) -> None:
    text_ = "Fire exits are marked in green.\n\nAssemble in the north car park."
    resp = httpx.post(
        f"{rag_gateway.url}/v1/documents",
        headers={"Authorization": f"Bearer {tenant.admin}"},
        json={
            "collection": "safety",
            "source_uri": "https://intranet/safety",
            "text": text_,
            "title": "Safety",
            "metadata": {"owner": "facilities"},
        },
    )
    assert resp.status_code == 201, resp.text
    version = resp.json()["document"]["latest_version"]
    assert version["metadata"] == {"owner": "facilities"}
    assert version["title"] == "Safety" and version["media_type"] == "text/plain"
    index = index_of(rag_gateway)
    query = query_vector("where are the fire exits")
    mine = index.search("safety", tenant_id(sessions, tenant.tenant), query, None, 3)
    assert len(mine) == 1
    theirs = index.search("safety", tenant_id(sessions, other_tenant.tenant), query, None, 3)
    assert theirs == []  # the tenant filter is applied in Qdrant too


def _chunk_ids(sessions: sessionmaker[Session], tenant: str) -> list[uuid.UUID]:
    tid = tenant_id(sessions, tenant)
    with sessions() as session:
        return list(session.scalars(select(Chunk.id).where(Chunk.tenant_id == tid)))


def test_a_chunk_is_readable_only_within_its_tenant(
    rag_gateway: GatewayServer,
    tenant: TenantKeys,
    other_tenant: TenantKeys,
    sessions: sessionmaker[Session],
) -> None:
    resp = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", LEAVE_V1.encode())
    assert resp.status_code == 201
    [chunk_id] = _chunk_ids(sessions, tenant.tenant)
    mine = get(rag_gateway.url, tenant.app, f"/v1/chunks/{chunk_id}")
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["text"] == LEAVE_V1.strip()
    assert body["text_sha256"] == hashlib.sha256(LEAVE_V1.strip().encode()).hexdigest()
    assert (body["char_start"], body["char_end"]) == (0, len(LEAVE_V1.strip()))
    assert body["version"] == 1 and body["current"] is True
    theirs = get(rag_gateway.url, other_tenant.app, f"/v1/chunks/{chunk_id}")
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert documents(rag_gateway, other_tenant.auditor) == []
    doc_id = resp.json()["document"]["id"]
    assert (
        get(rag_gateway.url, other_tenant.app, f"/v1/documents/{doc_id}/versions").status_code
        == 404
    )


def test_only_admin_keys_ingest(rag_gateway: GatewayServer, tenant: TenantKeys) -> None:
    for key in (tenant.app, tenant.auditor):
        resp = upload(rag_gateway.url, key, "hr", "leave.md", LEAVE_V1.encode())
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("filename", "data", "status", "code"),
    [
        ("payroll.xlsx", b"PK\x03\x04spreadsheet", 415, "unsupported_document_type"),
        ("script.exe", b"MZ", 415, "unsupported_document_type"),
        ("empty.txt", b"", 400, "empty_document"),
        ("blank.md", b"  \n\n \t\n", 400, "empty_document"),
        ("scan.pdf", pdf([" ", " "]), 400, "empty_document"),
        (
            "broken.pdf",
            b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ntrailer garbage",
            400,
            "corrupt_document",
        ),
        ("fake.pdf", b"this is not a pdf at all", 400, "corrupt_document"),
        ("fake.docx", b"PK\x03\x04 not really a zip", 400, "corrupt_document"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), 400, "corrupt_document"),
        ("huge.txt", b"word " * 60_000, 413, "payload_too_large"),
    ],
)
def test_bad_input_is_refused_with_nothing_ingested(
    rag_gateway: GatewayServer,
    tenant: TenantKeys,
    sessions: sessionmaker[Session],
    filename: str,
    data: bytes,
    status: int,
    code: str,
) -> None:
    resp = upload(rag_gateway.url, tenant.admin, "hr", filename, data)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and "Traceback" not in error["message"]
    assert documents(rag_gateway, tenant.auditor) == []
    tid = tenant_id(sessions, tenant.tenant)
    assert index_of(rag_gateway).count("hr", tenant_id=str(tid)) == 0


def test_malformed_requests_name_the_field(rag_gateway: GatewayServer, tenant: TenantKeys) -> None:
    bad_collection = upload(rag_gateway.url, tenant.admin, "HR Docs!", "a.txt", b"text")
    assert bad_collection.status_code == 400
    assert bad_collection.json()["error"]["param"] == "collection"
    headers = {"Authorization": f"Bearer {tenant.admin}"}
    no_text = httpx.post(
        f"{rag_gateway.url}/v1/documents",
        headers=headers,
        json={"collection": "hr", "source_uri": "x"},
    )
    assert no_text.status_code == 400 and no_text.json()["error"]["param"] == "text"
    no_file = httpx.post(
        f"{rag_gateway.url}/v1/documents", headers=headers, data={"collection": "hr"}, files={}
    )
    assert no_file.status_code == 400


@pytest.fixture
def failing_chunk_inserts(sessions: sessionmaker[Session]) -> Iterator[str]:
    """A real database failure: a trigger that aborts inserting a chunk containing the marker."""
    marker = "FAIL-INGEST"
    with sessions() as session:
        if session.bind.dialect.name == "sqlite":  # type: ignore[union-attr]
            session.execute(
                text(
                    "CREATE TRIGGER test_fail_chunks BEFORE INSERT ON chunks "
                    f"WHEN NEW.text LIKE '%{marker}%' "
                    "BEGIN SELECT RAISE(ABORT, 'forced failure'); END"
                )
            )
        else:
            session.execute(
                text(
                    "CREATE FUNCTION test_fail_chunks() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'forced failure'; END $$"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER test_fail_chunks BEFORE INSERT ON chunks FOR EACH ROW "
                    f"WHEN (NEW.text LIKE '%{marker}%') EXECUTE FUNCTION test_fail_chunks()"
                )
            )
        session.commit()
    yield marker
    with sessions() as session:
        if session.bind.dialect.name == "sqlite":  # type: ignore[union-attr]
            session.execute(text("DROP TRIGGER test_fail_chunks"))
        else:
            session.execute(text("DROP TRIGGER test_fail_chunks ON chunks"))
            session.execute(text("DROP FUNCTION test_fail_chunks()"))
        session.commit()


def test_a_failed_registration_leaves_neither_sql_rows_nor_vectors(
    rag_gateway: GatewayServer,
    tenant: TenantKeys,
    sessions: sessionmaker[Session],
    failing_chunk_inserts: str,
) -> None:
    tid = tenant_id(sessions, tenant.tenant)
    first = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", LEAVE_V1.encode())
    assert first.status_code == 201
    version_1 = first.json()["document"]["latest_version"]["id"]
    # a new version whose registration fails in the database, after its vectors were written
    bad = LEAVE_V2 + f"\n\n{failing_chunk_inserts}\n"
    resp = upload(rag_gateway.url, tenant.admin, "hr", "leave.md", bad.encode())
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "lineage_store_unavailable"
    # a brand-new document failing the same way
    resp = upload(rag_gateway.url, tenant.admin, "hr", "new.md", bad.encode())
    assert resp.status_code == 503

    [doc] = documents(rag_gateway, tenant.auditor)
    assert doc["source_uri"] == "leave.md" and doc["latest_version"]["version"] == 1
    index = index_of(rag_gateway)
    assert index.count("hr", tenant_id=str(tid)) == 1  # the compensation removed the new points
    assert index.active_versions("hr", tid) == {version_1: 1}  # version 1 is still current


def test_an_unreachable_vector_store_refuses_ingestion_with_nothing_registered(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, sessions: sessionmaker[Session]
) -> None:
    from service.app import create_app
    from service.config import RoutesFile
    from tests.conftest import new_tenant

    closed = GatewayServer.free_port()
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("dead-qdrant"),
        qdrant_url=f"http://127.0.0.1:{closed}",
    )
    server = GatewayServer(create_app(settings, RoutesFile())).start()
    try:
        keys = new_tenant(sessions)
        resp = upload(server.url, keys.admin, "hr", "leave.md", LEAVE_V1.encode())
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "vector_store_unavailable"
        assert documents(server, keys.auditor) == []
    finally:
        server.stop()


def test_reindex_rebuilds_a_lost_index_from_sql_and_sweeps_orphans(
    database_url: str, tmp_path: Path, sessions: sessionmaker[Session], tenant: TenantKeys
) -> None:
    from service.documents import service
    from service.documents.index import IndexPoint

    settings = make_settings(database_url, tmp_path / "data")
    tid = tenant_id(sessions, tenant.tenant)
    limits = service.Limits.of(settings)

    def ingest(index: VectorIndex, uri: str, text_: str) -> str:
        upload = service.Upload(
            collection="lost", source_uri=uri, data=text_.encode(), filename=uri
        )
        out = service.ingest(
            sessions, index, None, tenant_id=tid, upload=upload, limits=limits, actor="test"
        )
        return str(out.document.latest_version.id)

    index = VectorIndex.open(settings)
    ingest(index, "leave.md", LEAVE_V1)
    current = ingest(index, "leave.md", LEAVE_V2)
    other = ingest(index, "safety.md", "# Safety\n\nFire exits are green.")
    index.close()
    shutil.rmtree(settings.qdrant_location())  # the vector store is lost

    index = VectorIndex.open(settings)
    try:
        assert index.active_versions("lost", tid) == {}
        stray = IndexPoint(uuid.uuid4(), tid, uuid.uuid4(), uuid.uuid4(), None, query_vector("x"))
        index.prepare("lost", None)
        index.add("lost", [stray])
        counts = service.reindex(sessions, index, None, collection="lost")
        assert counts == {"versions": 3, "chunks": 3, "active": 2, "orphans_deleted": 1}
        assert index.active_versions("lost", tid) == {current: 1, other: 1}
        assert index.count("lost") == 3  # version 1's point is back, inactive
        hits = index.search("lost", tid, query_vector("paid leave days"), None, 5)
        assert len(hits) == 1
    finally:
        index.close()
