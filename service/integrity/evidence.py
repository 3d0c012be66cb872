"""Offline verification of a ZIP evidence pack (``provenant evidence``): no database, no network.

For every line of ``records.jsonl`` and ``events.jsonl``, the leaf is recomputed from the line
(``leaf.record_document`` / ``leaf.event_document``, the gateway's own definition) and its
inclusion proof must place it under the root of the signed checkpoint; content must match its
salted hashes, chunk texts their committed hashes, snapshots their hashes; every file must match
the manifest. Each problem names the entry (its id and its line).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zipfile
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from service.integrity import leaf, merkle
from service.integrity.canonical import digest
from service.integrity.signing import b64url_decode, parse_checkpoint, verify_note
from service.integrity.verify import Problem, Report, content_problem

_TIMES = ("created_at", "completed_at", "retain_until")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
# what a pack must hold; anything else must be listed in its manifest
REQUIRED = ("checkpoint.txt", "manifest.json", "records.jsonl", "events.jsonl", "proofs.jsonl")
PROVEN = ("records.jsonl", "events.jsonl")  # every line of these needs exactly one proof
# a pack is input from the party being audited: members are sized before they are read
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO = 200  # uncompressed / compressed, beyond what JSON or HTML reaches: a zip bomb


def is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _sized(infos: list[zipfile.ZipInfo], report: Report) -> list[zipfile.ZipInfo]:
    """The members safe to read: each within its size and compression-ratio bounds, all of
    them together within the total bound (oversized ones are reported, never decompressed)."""
    safe: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > MAX_MEMBER_BYTES or (
            info.compress_type != zipfile.ZIP_STORED and ratio > MAX_RATIO
        ):
            report.problems.append(
                Problem("altered", f"{info.filename}: {info.file_size:,} bytes declared, not read")
            )
            continue
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            report.problems.append(Problem("altered", "the pack is larger than can be verified"))
            break
        safe.append(info)
    return safe


def _read(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, report: Report) -> bytes | None:
    """A member's bytes. Stored members are read raw, so a byte changed in place still
    reaches the line it belongs to (the CRC mismatch is reported too)."""
    name = info.filename
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            with path.open("rb") as f:
                f.seek(info.header_offset)
                fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                f.seek(fields[10] + fields[11], 1)  # file name and extra field lengths
                data = f.read(info.compress_size)
            if zlib.crc32(data) != info.CRC:
                report.problems.append(Problem("altered", f"{name} was changed inside the archive"))
            return data
        with zf.open(info) as member:  # bounded: never more than the declared size
            return member.read(info.file_size + 1)[: info.file_size]
    except (zipfile.BadZipFile, OSError, struct.error, NotImplementedError, ValueError) as exc:
        report.problems.append(Problem("altered", f"{name} cannot be read: {exc}"))
        return None


def _times(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in _TIMES:
        if isinstance(out.get(name), str):
            out[name] = datetime.fromisoformat(out[name])
    return out


def _record_leaf(line: dict[str, Any]) -> tuple[str | None, str | None]:
    """(leaf hash, None) of a records.jsonl line, or (None, why it cannot be trusted)."""
    row = _times(line["record"])
    problem = content_problem(row)
    if problem is not None:
        return None, problem
    for r in line.get("retrievals") or []:
        text = r.get("chunk_text")
        if text is not None and hashlib.sha256(text.encode()).hexdigest() != r.get("chunk_sha256"):
            return (
                None,
                f"source {r.get('rank')}: the chunk text is not the text the answer was given",
            )
    snap = line.get("model_snapshot")
    snapshot_sha = None
    if snap is not None:
        snapshot_sha = digest(snap.get("content"))
        if snapshot_sha != snap.get("snapshot_sha256"):
            return None, "the model snapshot no longer matches its hash"
    doc = leaf.record_document(
        row,
        retrievals=line.get("retrievals") or [],
        decisions=line.get("policy_decisions") or [],
        snapshot_sha256=snapshot_sha,
    )
    computed = leaf.leaf_sha256(doc)
    if row.get("leaf_sha256") != computed:
        return None, "the record or its lineage no longer matches its leaf hash"
    return computed, None


def _event_leaf(line: dict[str, Any]) -> tuple[str | None, str | None]:
    row = _times(line["event"])
    computed = leaf.leaf_sha256(leaf.event_document(row))
    if row.get("leaf_sha256") != computed:
        return None, "the admin event no longer matches its leaf hash"
    return computed, None


def verify_pack(
    path: Path, *, publics: dict[str, bytes] | None = None, origin: str | None = None
) -> tuple[Report, bool]:
    """Verify a ZIP pack; returns the report and whether the pack's own keys were trusted
    (no ``publics`` given)."""
    report = Report()
    with zipfile.ZipFile(path) as zf:
        files = {i.filename: _read(zf, path, i, report) for i in _sized(zf.infolist(), report)}
    for name in REQUIRED:
        if name not in files:
            report.problems.append(Problem("deleted", f"the pack has no {name}"))
    own_keys = publics is None
    if publics is None:
        try:
            keys = orjson.loads(files.get("jwks.json") or b'{"keys": []}')
            publics = {k["kid"]: b64url_decode(k["x"]) for k in keys.get("keys", [])}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            report.problems.append(Problem("altered", "jwks.json is unreadable"))
            publics = {}
    root = _checkpoint(files.get("checkpoint.txt"), origin, list(publics.values()), report)
    _manifest(files, report)
    if root is None:
        return report, own_keys
    size, root_hash = root
    report.tree_size = report.latest_checkpoint = size
    report.checkpoints = 1
    report.pending = (files.get("unsealed.jsonl") or b"").count(b"\n")
    lines = {name: _lines(name, files.get(name), report) for name in PROVEN}
    proofs = _lines("proofs.jsonl", files.get("proofs.jsonl"), report)
    proven: set[tuple[str, int]] = set()
    for n, raw in enumerate(proofs, start=1):
        try:
            p = orjson.loads(raw)
            name, number, entry = p["file"], int(p["line"]), str(p["entry_id"])
            index = int(p["log_index"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            report.problems.append(Problem("altered", f"proofs.jsonl line {n} is unreadable"))
            continue
        where = f"({name} line {number})"
        body = lines.get(name, [])
        if not 1 <= number <= len(body):
            report.problems.append(Problem("deleted", f"{where} is missing", entry))
            continue
        if (name, number) in proven:
            report.problems.append(
                Problem("altered", f"{where} has a second proof (proofs.jsonl line {n})", entry)
            )
            continue
        proven.add((name, number))
        report.entries += 1
        try:
            line = orjson.loads(body[number - 1])
            row = line["record"] if name == "records.jsonl" else line["event"]
            computed, why = (_record_leaf if name == "records.jsonl" else _event_leaf)(line)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"{where} cannot be read: {type(exc).__name__}"
            report.problems.append(Problem("altered", detail, entry, p.get("log_index")))
            continue
        if str(row.get("id")) != entry:
            report.problems.append(Problem("altered", f"{where} names another entry", entry))
            continue
        if why is not None or computed is None:
            report.problems.append(Problem("altered", f"{where} {why}", entry, index))
            continue
        try:
            path_hashes = [base64.b64decode(h, validate=True) for h in p.get("proof", [])]
            ok = computed == p.get("leaf_sha256") and merkle.verify_inclusion(
                index, size, bytes.fromhex(computed), path_hashes, root_hash
            )
        except (TypeError, ValueError):  # a malformed proof proves nothing
            ok = False
        if not ok:
            detail = f"{where} is not in the signed log at index {index}"
            report.problems.append(Problem("altered", detail, entry, index))
    for name, body in lines.items():
        for number, raw in enumerate(body, start=1):
            if (name, number) not in proven:
                report.problems.append(
                    Problem("inserted", f"({name} line {number}) has no inclusion proof", _id(raw))
                )
    return report, own_keys


def _lines(name: str, data: bytes | None, report: Report) -> list[bytes]:
    """A JSONL member's lines; a last line without its newline is reported, not dropped."""
    if not data:
        return []
    body = data.split(b"\n")
    if body[-1]:
        report.problems.append(Problem("altered", f"{name} does not end with a newline"))
    else:
        body.pop()
    return body


def _id(raw: bytes) -> str | None:
    """The id an unproven line claims, to name it (None if it names none)."""
    try:
        line = orjson.loads(raw)
        entry = line.get("record") or line.get("event") or {}
        return str(entry["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _checkpoint(
    note: bytes | None, origin: str | None, publics: list[bytes], report: Report
) -> tuple[int, bytes] | None:
    if note is None:
        return None
    text = note.decode("utf-8", errors="replace")
    name = origin or text.split("\n", 1)[0]
    body = verify_note(text, name, publics)
    if body is None:
        report.problems.append(
            Problem("signature", "checkpoint.txt: no valid signature by a trusted key")
        )
        return None
    try:
        _, size, root = parse_checkpoint(body)
    except ValueError as exc:
        report.problems.append(Problem("checkpoint", f"checkpoint.txt: {exc}"))
        return None
    return size, root


def _manifest(files: dict[str, bytes | None], report: Report) -> None:
    raw = files.get("manifest.json")
    if raw is None:
        return
    try:
        listed: dict[str, str] = orjson.loads(raw)["files"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        report.problems.append(Problem("altered", "manifest.json is unreadable"))
        return
    for name, sha in listed.items():
        data = files.get(name)
        if data is None:
            report.problems.append(Problem("deleted", f"{name} is listed but missing"))
        elif hashlib.sha256(data).hexdigest() != sha:
            report.problems.append(Problem("altered", f"{name} does not match manifest.json"))
    for name in files:
        if name != "manifest.json" and name not in listed:
            report.problems.append(Problem("inserted", f"{name} is not in manifest.json"))
