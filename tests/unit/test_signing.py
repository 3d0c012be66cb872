"""Receipts: the compact JWS Provenant encodes itself is the one PyJWT would, and PyJWT verifies
it (and refuses it once altered)."""

from __future__ import annotations

import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.signing import RECEIPT_TYPE, Signer, public_jwk, verify_receipt


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate(), "provenant.test/log")


def _claims(i: int) -> dict[str, object]:
    return {
        "iss": "provenant.test/log",
        "sub": str(uuid.uuid4()),
        "leaf": f"{i:064x}",
        "answer_sha256": f"{i * 7:064x}",
        "iat": 1_795_000_000 + i,
        "mmd": 60,
    }


def test_receipts_are_byte_identical_to_pyjwt_and_verify(signer: Signer) -> None:
    jwks = {"keys": [public_jwk(signer.public)]}
    for i in range(50):
        claims = _claims(i)
        token = signer.receipt(claims)
        expected = jwt.encode(
            claims, signer.key, algorithm="EdDSA", headers={"kid": signer.kid, "typ": RECEIPT_TYPE}
        )
        assert token == expected
        assert verify_receipt(token, jwks) == claims


def test_a_receipt_with_other_json_values_still_verifies(signer: Signer) -> None:
    jwks = {"keys": [public_jwk(signer.public)]}
    claims = {**_claims(1), "iss": "provenant.exämple/lög", "extra": [1.5, None, True, {"a": "€"}]}
    assert verify_receipt(signer.receipt(claims), jwks) == claims


def test_an_altered_receipt_is_refused(signer: Signer) -> None:
    jwks = {"keys": [public_jwk(signer.public)]}
    header, _, signature = signer.receipt(_claims(2)).split(".")
    forged = jwt.utils.base64url_encode(b'{"sub":"someone else"}').decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify_receipt(f"{header}.{forged}.{signature}", jwks)
    other = Signer(Ed25519PrivateKey.generate(), "provenant.test/log")
    with pytest.raises(jwt.InvalidTokenError):
        verify_receipt(other.receipt(_claims(2)), jwks)  # a key the JWKS does not hold
