"""Receipts and proofs as a downstream app uses them: the official openai SDK gets an answer,
its receipt verifies with the gateway's JWKS, and once sealed the record's inclusion proof
verifies against a signed checkpoint. A modified receipt fails."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import openai
import pytest

from service.integrity import merkle
from service.integrity.signing import b64url_decode, parse_checkpoint, verify_note, verify_receipt
from tests.conftest import TenantKeys
from tests.support.servers import GatewayServer

ORIGIN = "provenant.local/audit-log"  # the default PROVENANT_LOG_ORIGIN
MESSAGES = [{"role": "user", "content": "Which policy covers travel expenses?"}]


def get(gateway: GatewayServer, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{gateway.url}{path}", headers=headers, timeout=10)


def proof_when_sealed(gateway: GatewayServer, key: str, audit_id: str) -> dict:
    deadline = time.monotonic() + 20
    while True:
        resp = get(gateway, f"/v1/audit/records/{audit_id}/proof", key)
        if resp.status_code == 200:
            return resp.json()
        assert resp.json()["error"]["code"] == "not_sealed_yet", resp.text
        assert time.monotonic() < deadline, "the record was not sealed within 20 s"
        time.sleep(0.1)


def check_inclusion(gateway: GatewayServer, key: str, audit_id: str, leaf_hex: str) -> None:
    jwks = get(gateway, "/.well-known/jwks.json").json()
    publics = [b64url_decode(k["x"]) for k in jwks["keys"]]
    proof = proof_when_sealed(gateway, key, audit_id)
    body = verify_note(proof["checkpoint"]["checkpoint"], ORIGIN, publics)
    assert body is not None, "the checkpoint's signature does not verify with the JWKS"
    origin, size, root = parse_checkpoint(body)
    assert (origin, size) == (ORIGIN, proof["tree_size"])
    leaf = base64.b64decode(proof["leaf_hash"])
    assert leaf.hex() == leaf_hex
    path = [base64.b64decode(p) for p in proof["proof"]]
    assert merkle.verify_inclusion(proof["log_index"], size, leaf, path, root)
    # the same proof does not place another leaf there
    assert not merkle.verify_inclusion(proof["log_index"], size, b"\x01" * 32, path, root)


def test_receipt_verifies_and_the_record_is_provably_in_the_log(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client:
        answer = client.chat.completions.create(model="echo", messages=MESSAGES)
    provenance = answer.model_extra["provenance"]
    receipt = provenance["receipt"]
    jwks = get(gateway, "/.well-known/jwks.json").json()

    claims = verify_receipt(receipt, jwks)
    text = answer.choices[0].message.content
    assert claims["sub"] == provenance["audit_id"]
    assert claims["answer_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert claims["iss"] == ORIGIN and claims["mmd"] == 60
    record = get(gateway, f"/v1/audit/records/{claims['sub']}", tenant.app).json()
    assert record["leaf_sha256"] == claims["leaf"]

    header, _payload, signature = receipt.split(".")
    forged = dict(claims, answer_sha256="0" * 64)
    forged_payload = (
        base64.urlsafe_b64encode(__import__("json").dumps(forged).encode()).rstrip(b"=").decode()
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify_receipt(f"{header}.{forged_payload}.{signature}", jwks)

    check_inclusion(gateway, tenant.app, claims["sub"], claims["leaf"])


def test_a_streamed_answer_carries_a_receipt_too(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client:
        stream = client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        chunks = list(stream)
    provenance = next(c.model_extra["provenance"] for c in chunks if "provenance" in c.model_extra)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    claims = verify_receipt(provenance["receipt"], get(gateway, "/.well-known/jwks.json").json())
    assert claims["answer_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    check_inclusion(gateway, tenant.app, provenance["audit_id"], claims["leaf"])


def test_checkpoints_are_consistent_and_other_tenants_get_no_proof(
    gateway: GatewayServer, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client:
        first = client.chat.completions.create(model="echo", messages=MESSAGES)
        proof_when_sealed(gateway, tenant.app, first.model_extra["provenance"]["audit_id"])
        old = get(gateway, "/v1/audit/checkpoints/latest", tenant.auditor).json()
        second = client.chat.completions.create(model="echo", messages=MESSAGES)
        audit_id = second.model_extra["provenance"]["audit_id"]
        proof_when_sealed(gateway, tenant.app, audit_id)
    new = get(gateway, "/v1/audit/checkpoints/latest", tenant.auditor).json()
    assert new["tree_size"] > old["tree_size"]
    resp = get(
        gateway, f"/v1/audit/consistency?from={old['tree_size']}&to={new['tree_size']}", tenant.app
    )
    assert resp.status_code == 200, resp.text
    path = [base64.b64decode(p) for p in resp.json()["proof"]]
    assert merkle.verify_consistency(
        old["tree_size"],
        new["tree_size"],
        path,
        base64.b64decode(old["root_hash"]),
        base64.b64decode(new["root_hash"]),
    )
    assert get(gateway, f"/v1/audit/records/{audit_id}/proof", other_tenant.app).status_code == 404
    assert get(gateway, f"/v1/audit/checkpoints/{new['tree_size']}").status_code == 401


def test_verify_receipt_command_against_the_live_jwks(
    gateway: GatewayServer, tenant: TenantKeys, tmp_path: Path
) -> None:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=tenant.app) as client:
        answer = client.chat.completions.create(model="echo", messages=MESSAGES)
    receipt = answer.model_extra["provenance"]["receipt"]
    answer_file = tmp_path / "answer.txt"
    answer_file.write_text(answer.choices[0].message.content)
    cmd = [sys.executable, "-m", "service.cli", "verify-receipt"]
    jwks = f"{gateway.url}/.well-known/jwks.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )

    ok = run(receipt, "--jwks", jwks, "--answer", str(answer_file))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("VALID"), ok.stdout + ok.stderr
    answer_file.write_text("a different answer")
    wrong = run(receipt, "--jwks", jwks, "--answer", str(answer_file))
    assert wrong.returncode == 1 and "does not cover this answer" in wrong.stdout
    broken = run(
        receipt[:-4] + ("AAAA" if not receipt.endswith("AAAA") else "BBBB"), "--jwks", jwks
    )
    assert broken.returncode == 1 and broken.stdout.startswith("INVALID")
