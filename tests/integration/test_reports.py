"""Every report kind in every format, pulled as an auditor from a database seeded through the
real gateway (plain, RAG, fine-tuned and blocked answers), checked against the seed; evidence
packs verified offline, and a flipped byte named by its record. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from service.cli import app as cli
from service.errors import ExportTooLarge
from service.integrity.evidence import verify_pack
from service.lineage.models import AdminEvent
from service.reports import attestation, evidence
from service.reports.kinds import SECTIONS, Format, Kind
from service.reports.service import Request
from service.tenancy.models import Role, Tenant
from service.tenancy.service import create_key
from tests.conftest import new_tenant
from tests.support.mlflow import MlflowServer, Registry
from tests.support.reports_seed import Seed, seeded_gateway
from tests.support.secrets import ISSUED
from tests.support.servers import UpstreamServer


@pytest.fixture(scope="module")
def seed(
    database_url: str,
    sessions: sessionmaker[Session],
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Seed]:
    keys = new_tenant(sessions)
    with seeded_gateway(
        database_url,
        tmp_path_factory.mktemp("reports"),
        upstream,
        registry,
        mlflow_server.url,
        keys,
    ) as seed:
        yield seed


def pull(seed: Seed, kind: str, fmt: str, key: str | None = None, **extra: str) -> httpx.Response:
    resp = httpx.get(
        f"{seed.gateway.url}/v1/reports/{kind}",
        params={**seed.period(), "format": fmt, **extra},
        headers={"Authorization": f"Bearer {key or seed.keys.auditor}"},
        timeout=120,
    )
    assert resp.status_code == 200, (kind, fmt, resp.text[:500])
    return resp


def rows(doc: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return doc["sections"][section]["rows"]


def check_activity(seed: Seed, doc: dict[str, Any]) -> list[str]:
    assert sum(r["records"] for r in rows(doc, "by_day")) == 7
    status = {r["status"]: r["records"] for r in rows(doc, "by_status")}
    assert status == {"ok": 6, "policy_blocked": 1}
    by_route = {r["route"]: r for r in rows(doc, "by_route")}
    assert by_route["support-bot"]["records"] == 2 and by_route["support-bot"]["ok"] == 2
    assert by_route["guarded"]["blocked"] == 1 and by_route["guarded"]["ok"] == 0
    assert by_route["hr-rag"]["model"] == "cite-1" and by_route["hr-rag"]["total_tokens"] > 0
    return ["support-bot", "guarded", "hr-rag"]


def check_model_inventory(seed: Seed, doc: dict[str, Any]) -> list[str]:
    [model] = rows(doc, "registered")
    v = seed.version
    assert (model["name"], model["version"], model["run_id"]) == (v.name, v.version, v.run_id)
    assert model["adapter"] == "support-v7" and model["base_model"] == "llama-3-8b"
    assert model["datasets"] == f"tickets-2026-10@{v.digest[:12]}"
    assert (model["records"], model["answers"], model["blocked"]) == (2, 2, 0)
    plain = {(r["route"], r["upstream_model"]): r["records"] for r in rows(doc, "unregistered")}
    assert plain[("echo", "echo-1")] == 1 and plain[("guarded", "echo-1")] == 1
    return [v.name, "support-v7", "tickets-2026-10"]


def check_source_usage(seed: Seed, doc: dict[str, Any]) -> list[str]:
    versions = {r["version"]: r for r in rows(doc, "documents")}
    assert versions[1]["citations"] == 1 and versions[1]["superseded_at"] is not None
    assert versions[2]["citations"] == 1 and versions[2]["superseded_at"] is None
    assert versions[1]["title"] == "Leave policy" and versions[1]["source_uri"] == "leave.pdf"
    [old] = rows(doc, "superseded")
    assert old["record_id"] == seed.ids["rag_v1"] and old["version"] == 1
    assert old["at_answer_time"] is False
    [uncited] = rows(doc, "uncited")
    assert uncited["record_id"] == seed.ids["rag_uncited"] and uncited["sources"] == 1
    summary = {r["measure"]: r["value"] for r in rows(doc, "summary")}
    assert summary["sourced answers (status ok)"] == 3
    assert summary["answers citing none of their sources"] == 1
    assert summary["answers citing a version superseded since"] == 1
    return [seed.ids["rag_v1"], "Leave policy"]


def check_policy_violations(seed: Seed, doc: dict[str, Any]) -> list[str]:
    by_policy = {(r["policy_id"], r["outcome"]): r for r in rows(doc, "by_policy")}
    blocked = by_policy[("no-secrets", "blocked")]
    assert blocked["records"] == 1 and blocked["severity"] == "high"
    assert blocked["frameworks"] == "EU-AI-Act:Art12, NIST-AI-600-1:MS-2.8-003"
    assert by_policy[("rag-cites", "flagged")]["records"] == 1
    frameworks = {r["framework"]: r for r in rows(doc, "by_framework")}
    assert frameworks["EU-AI-Act:Art12"]["blocked"] == 1
    assert frameworks["EU-AI-Act:Art13"]["flagged"] == 1
    decisions = {r["record_id"]: r for r in rows(doc, "decisions")}
    assert decisions[seed.ids["blocked"]]["status"] == "policy_blocked"
    assert decisions[seed.ids["rag_uncited"]]["policy_id"] == "rag-cites"
    return [seed.ids["blocked"], "no-secrets"]


def check_ai_act_log(seed: Seed, doc: dict[str, Any]) -> list[str]:
    log = {r["record_id"]: r for r in rows(doc, "log")}
    assert set(log) == set(seed.ids.values())
    assert log[seed.ids["rag_v1"]]["reference_database"] == "hr: leave.pdf v1"
    assert log[seed.ids["rag_v2"]]["reference_database"] == "hr: leave.pdf v2"
    ft = log[seed.ids["finetuned_1"]]
    assert ft["model_version"] == f"{seed.version.name} v{seed.version.version} (support-v7)"
    assert all(r["log_index"] is not None and r["output_sha256"] for r in log.values())
    assert log[seed.ids["blocked"]]["status"] == "policy_blocked"
    return [seed.ids["finetuned_1"], "leave.pdf v2"]


def check_integrity(seed: Seed, doc: dict[str, Any]) -> list[str]:
    checks = rows(doc, "checks")
    assert [c["result"] for c in checks] == ["ok"] * 4, checks
    assert "7 records in the period, 7 sealed" in checks[-1]["detail"]
    assert rows(doc, "checkpoints") and all(c["consistent"] for c in rows(doc, "checkpoints"))
    assert rows(doc, "problems") == []
    return ["Integrity checks", doc["checkpoint"]["root_sha256"]]


def check_subject(seed: Seed, doc: dict[str, Any]) -> list[str]:
    records = {r["record_id"]: r for r in rows(doc, "records")}
    assert set(records) == {seed.ids[k] for k in ("rag_v1", "rag_v2", "finetuned_1")}
    assert records[seed.ids["rag_v1"]]["sources"] == "hr: Leave policy v1 p.2"
    assert all(r["content"] == "present" and r["prompt"] for r in records.values())
    [hold] = rows(doc, "events")
    assert hold["action"] == "hold.placed" and "litigation 4" in hold["detail"]
    return [seed.ids["rag_v1"], "Leave policy v1 p.2"]


def check_retention(seed: Seed, doc: dict[str, Any]) -> list[str]:
    [cls] = rows(doc, "classes")
    assert (cls["retention_class"], cls["records"]) == ("hipaa-6y", 7)
    assert (cls["content_erased"], cls["content_present"], cls["due"]) == (2, 5, 0)
    [hold] = rows(doc, "holds")
    assert (hold["scope"], hold["value"], hold["released_at"]) == ("subject", "alice", None)
    [run] = rows(doc, "runs")
    assert (run["action"], run["records"]) == ("erasure", 2)
    return ["hipaa-6y", "litigation 4"]


CHECKS = {
    Kind.activity: check_activity,
    Kind.model_inventory: check_model_inventory,
    Kind.source_usage: check_source_usage,
    Kind.policy_violations: check_policy_violations,
    Kind.ai_act_log: check_ai_act_log,
    Kind.integrity: check_integrity,
    Kind.subject: check_subject,
    Kind.retention: check_retention,
}


@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_every_report_kind_in_every_format_matches_the_seed(
    seed: Seed, kind: Kind, sessions: sessionmaker[Session]
) -> None:
    extra = {"subject": "alice"} if kind is Kind.subject else {}
    doc = pull(seed, kind.value, "json", **extra).json()
    # the header makes the report stand on its own
    assert doc["report"] == kind.value and doc["tenant"]["name"] == seed.keys.tenant
    assert doc["period"] == {"from": seed.start.isoformat(), "to": seed.end.isoformat()}
    assert doc["filters"]["subject"] == extra.get("subject")
    assert doc["generator"].startswith("provenant ") and doc["generated_at"]
    assert doc["checkpoint"]["tree_size"] > 0 and len(doc["checkpoint"]["root_sha256"]) == 64
    assert list(doc["sections"]) == [s.key for s in SECTIONS[kind]]
    for s in SECTIONS[kind]:
        assert doc["sections"][s.key]["columns"] == s.names
    expected = CHECKS[kind](seed, doc)

    table = list(csv.reader(io.StringIO(pull(seed, kind.value, "csv", **extra).text)))
    header = dict(r for r in table if len(r) == 2 and not r[0].startswith("section:"))
    assert header["report"] == kind.value and header["tenant"] == seed.keys.tenant
    assert int(header["checkpoint_tree_size"]) >= doc["checkpoint"]["tree_size"]
    for s in SECTIONS[kind]:
        start = next(i for i, r in enumerate(table) if r and r[0] == f"section:{s.key}")
        assert table[start + 1] == s.names
        body = table[start + 2 : start + 2 + len(rows(doc, s.key))]
        assert len(body) == len(rows(doc, s.key)) and all(len(r) == len(s.names) for r in body)

    html = pull(seed, kind.value, "html", **extra).text
    pdf = pull(seed, kind.value, "pdf", **extra)
    assert pdf.headers["content-type"] == "application/pdf"
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    text = " ".join(text.split())
    for needle in [seed.keys.tenant, "tree size", *expected]:
        assert needle in html, (kind, needle)
        # narrow PDF columns wrap words anywhere: compare without whitespace
        assert needle.replace(" ", "")[:30] in text.replace(" ", ""), (kind, needle, text[:800])
    if kind in (Kind.activity, Kind.source_usage):
        assert "<svg" in html  # charts where a picture says more than a table

    with sessions() as session:
        exported = session.scalars(
            select(AdminEvent).where(
                AdminEvent.action == "report.exported", AdminEvent.target == f"report:{kind}"
            )
        ).all()
    mine = [e for e in exported if e.detail and e.detail["from"] == seed.start.isoformat()]
    assert {e.detail["format"] for e in mine} >= {f.value for f in Format}
    assert mine and all(e.actor.startswith("key:") for e in mine)


def test_another_tenants_auditor_sees_none_of_it(
    seed: Seed, sessions: sessionmaker[Session]
) -> None:
    other = new_tenant(sessions)
    doc = pull(seed, "activity", "json", key=other.auditor).json()
    assert doc["tenant"]["name"] == other.tenant
    assert all(not s["rows"] for s in doc["sections"].values())
    log = pull(seed, "ai-act-log", "json", key=other.auditor).json()
    assert rows(log, "log") == []
    app = httpx.get(
        f"{seed.gateway.url}/v1/reports/activity",
        params=seed.period(),
        headers={"Authorization": f"Bearer {seed.keys.app}"},
    )
    assert app.status_code == 403
    empty = httpx.get(
        f"{seed.gateway.url}/v1/reports/activity",
        params={"from": seed.end.isoformat(), "to": seed.start.isoformat()},
        headers={"Authorization": f"Bearer {seed.keys.auditor}"},
    )
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "to"


def _flip(data: bytes, needle: bytes) -> bytes:
    at = data.index(needle)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_an_evidence_pack_verifies_offline_and_a_flipped_byte_names_its_record(
    seed: Seed, tmp_path: Path, database_url: str
) -> None:
    resp = httpx.get(
        f"{seed.gateway.url}/v1/evidence",
        params=seed.period(),
        headers={"Authorization": f"Bearer {seed.keys.auditor}"},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text[:300]
    pack = tmp_path / "pack.zip"
    pack.write_bytes(resp.content)
    with zipfile.ZipFile(pack) as zf:
        names = set(zf.namelist())
        records = zf.read("records.jsonl").decode().splitlines()
        manifest = zf.read("manifest.json")
    assert {"README.md", "checkpoint.txt", "jwks.json", "proofs.jsonl", "manifest.json"} <= names
    assert {f"reports/{k}.{f}" for k in ("activity", "ai-act-log") for f in ("json", "html")} <= (
        names
    )
    assert len(records) == 7 and b'"records": 7' in manifest
    jwks = tmp_path / "keys.json"
    jwks.write_bytes(httpx.get(f"{seed.gateway.url}/.well-known/jwks.json").content)

    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", "--pack", str(pack), "--jwks", str(jwks)])
    assert ok.exit_code == 0, ok.output
    assert "OK:" in ok.output and "entries of the pack" in ok.output

    # one byte of the fine-tuned answer's text, changed in place inside the ZIP
    answer = next(r for r in records if seed.ids["finetuned_2"] in r)
    assert '"answer":"Echo: Can I upgrade?"' not in answer  # bob's content was erased
    target = next(r for r in records if seed.ids["finetuned_1"] in r)
    assert "Which plan am I on?" in target
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(_flip(pack.read_bytes(), b"Which plan am I on?"))
    bad = runner.invoke(cli, ["verify", "--pack", str(tampered), "--jwks", str(jwks)])
    assert bad.exit_code == 1, bad.output
    named = [line for line in bad.output.splitlines() if line.startswith("ALTERED")]
    assert any(seed.ids["finetuned_1"] in line and "records.jsonl line" in line for line in named)
    assert all(seed.ids["finetuned_1"] in line or "records.jsonl" in line for line in named), named

    # a record rewritten and re-zipped (the CRC then matches): still named, by leaf and proof
    with zipfile.ZipFile(pack) as src, zipfile.ZipFile(tmp_path / "rezipped.zip", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "records.jsonl":
                data = data.replace(b'"route":"echo"', b'"route":"echx"')
            dst.writestr(item, data)
    report, own_keys = verify_pack(tmp_path / "rezipped.zip")
    assert own_keys and not report.ok
    altered = {p.entry_id for p in report.problems if p.entry_id}
    assert altered == {seed.ids["plain"]}, report.problems

    # forgeries that keep every proof intact: each still fails verification
    forged_event = orjson.dumps({"event": {"id": "forged-event", "action": "erasure"}})
    assert verify_pack(_repack(pack, tmp_path / "same.zip", {}))[
        0
    ].ok  # the forger's tool is faithful
    cases = {
        # a line outside the proofs, without its newline so a line splitter might drop it
        "no-newline": {"events.jsonl": lambda d: d + forged_event},
        # a forged line given a copy of another line's proof
        "reused-proof": {
            "events.jsonl": lambda d: d + forged_event + b"\n",
            "proofs.jsonl": lambda d: d + d.splitlines(keepends=True)[-1],
        },
        # the records, events and proofs taken out altogether
        "emptied": {n: None for n in ("records.jsonl", "events.jsonl", "proofs.jsonl")},
    }
    for case, edits in cases.items():
        report, _ = verify_pack(_repack(pack, tmp_path / f"{case}.zip", edits))
        assert not report.ok, case
    # a member that would decompress to far more than it occupies is not read
    bomb = tmp_path / "bomb.zip"
    _repack(pack, bomb, {})
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("reports/huge.json", b"0" * (32 << 20))
    report, _ = verify_pack(bomb)
    assert not report.ok
    assert any("reports/huge.json" in p.detail and "not read" in p.detail for p in report.problems)


def _repack(pack: Path, out: Path, edits: dict[str, Any]) -> Path:
    """A copy of ``pack`` with members edited (``None``: taken out) and the manifest's hashes
    recomputed, as an operator forging a pack would."""
    with zipfile.ZipFile(pack) as src:
        files = {i.filename: src.read(i) for i in src.infolist()}
    for name, edit in edits.items():
        if edit is None:
            files.pop(name, None)
        else:
            files[name] = edit(files.get(name, b""))
    manifest = orjson.loads(files["manifest.json"])
    manifest["files"] = {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "manifest.json"
    }
    files["manifest.json"] = orjson.dumps(manifest)
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in files.items():
            dst.writestr(name, data)
    return out


def test_report_and_evidence_from_the_command_line(
    seed: Seed, tmp_path: Path, database_url: str
) -> None:
    runner = CliRunner()
    env = {"PROVENANT_DATABASE_URL": database_url}
    period = ["--from", seed.start.isoformat(), "--to", seed.end.isoformat()]
    out = tmp_path / "models.json"
    done = runner.invoke(
        cli,
        ["report", "model-inventory", *period, "--tenant", seed.keys.tenant, "--format", "json",
         "--out", str(out)],
        env=env,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert f"wrote {out}" in done.output
    import orjson

    doc = orjson.loads(out.read_bytes())
    assert rows(doc, "registered")[0]["version"] == seed.version.version
    assert doc["generated_by"].startswith("cli")
    pack = tmp_path / "cli-pack.zip"
    done = runner.invoke(
        cli,
        ["evidence", *period, "--tenant", seed.keys.tenant, "--out", str(pack), "--no-seal"],
        env=env,
    )
    assert done.exit_code == 0, done.output
    report, _ = verify_pack(pack)
    assert report.ok and report.entries >= 7, report.problems
    missing = runner.invoke(
        cli, ["report", "subject", *period, "--tenant", seed.keys.tenant], env=env
    )
    assert missing.exit_code == 2 and "subject" in missing.output


def test_any_tenant_name_downloads_and_csv_cells_never_run_as_formulas(
    seed: Seed, sessions: sessionmaker[Session]
) -> None:
    # a tenant name that is not Latin-1, has a quote and a slash, and reads as a formula
    name = f'=東京 "ops"/{uuid.uuid4().hex[:6]}'
    with sessions() as session:
        auditor = create_key(session, tenant=name, role=Role.auditor).key
        session.commit()
    ISSUED.append(auditor)
    resp = pull(seed, "activity", "csv", key=auditor)
    disposition = resp.headers["content-disposition"]
    assert disposition.isascii() and 'filename="provenant-activity-' in disposition
    assert "filename*=UTF-8''provenant-activity-%3D%E6%9D%B1%E4%BA%AC" in disposition
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert ["tenant", "'" + name] in rows
    assert not [c for row in rows for c in row if c.startswith(("=", "+", "@"))]


def test_an_evidence_pack_over_http_is_bounded(seed: Seed, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(ExportTooLarge) as refused:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == seed.keys.tenant)).one()
        evidence.write_pack(
            session,
            io.BytesIO(),
            tenant_id=tenant_id,
            tenant=seed.keys.tenant,
            start=seed.start,
            end=seed.end,
            actor="test",
            origin="unused",
            max_records=3,
        )
    assert "more than the 3 an evidence pack" in refused.value.message


def test_a_subject_report_shows_a_hold_placed_and_released(seed: Seed) -> None:
    admin = {"Authorization": f"Bearer {seed.keys.admin}"}
    base = seed.gateway.url
    subject = f"dana-{uuid.uuid4().hex[:6]}"
    placed = httpx.post(
        f"{base}/v1/admin/holds",
        json={"scope": "subject", "value": subject, "reason": "audit 9"},
        headers=admin,
    )
    assert placed.status_code in (200, 201), placed.text
    released = httpx.post(
        f"{base}/v1/admin/holds/{placed.json()['id']}/release",
        json={"reason": "audit closed"},
        headers=admin,
    )
    assert released.status_code == 200, released.text
    doc = pull(seed, "subject", "json", subject=subject).json()
    assert [e["action"] for e in rows(doc, "events")] == ["hold.placed", "hold.released"]
    assert "audit closed" in rows(doc, "events")[1]["detail"]
    # another subject's hold is not shown
    alice = pull(seed, "subject", "json", subject="alice").json()
    assert all("audit 9" not in e["detail"] for e in rows(alice, "events"))


def test_an_integrity_attestation_over_more_checkpoints_than_it_lists_says_it_is_partial(
    seed: Seed, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attestation, "MAX_LIST_ROWS", 1)  # the seed signed several checkpoints
    with sessions() as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == seed.keys.tenant)).one()
        scope = Request(Kind.integrity, tenant_id, seed.keys.tenant, seed.start, seed.end).scope()
        checks = attestation.integrity(session, scope, "unused")[0].rows
    [grew] = [c for c in checks if c["check"].startswith("the log only grew")]
    assert grew["result"] == "partial", grew
    assert grew["detail"].startswith("the oldest 1 of the period's ")
