"""The log's Ed25519 key: checkpoints as C2SP signed notes, receipts as compact JWS, the JWKS.

One private key signs both. It is read from ``PROVENANT_SIGNING_KEY_FILE`` (PKCS#8 PEM); in the
embedded default it is generated into ``./data/`` (mode 0600) on first start. Every public key
that ever signed is kept in ``signing_keys``, so rotating the file keeps old checkpoints and
receipts verifiable.

Note signatures follow https://c2sp.org/signed-note: the line is ``— <key name> base64(key id ||
signature)`` with key id = SHA-256(name || 0x0A || 0x01 || public key)[:4] (0x01 = Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RECEIPT_TYPE = "provenant-receipt+jwt"
_EM_DASH = "\u2014"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(public: bytes) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key: the stable key id (``kid``)."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(public)}
    return b64url(hashlib.sha256(orjson.dumps(members, option=orjson.OPT_SORT_KEYS)).digest())


def public_jwk(public: bytes) -> dict[str, str]:
    """The JWK of a public key, as served at /.well-known/jwks.json."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(public),
        "kid": thumbprint(public),
        "alg": "EdDSA",
        "use": "sig",
    }


def note_key_id(name: str, public: bytes) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key named ``name``."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]


def load_or_create(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """Read the PEM key at ``path``; with ``create``, generate it there (0600) if missing."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"signing key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


@dataclass(frozen=True)
class Signer:
    """Signs checkpoints and receipts for the log named ``origin``."""

    key: Ed25519PrivateKey
    origin: str

    @cached_property
    def public(self) -> bytes:
        return raw_public(self.key.public_key())

    @cached_property
    def kid(self) -> str:
        return thumbprint(self.public)

    @cached_property
    def _receipt_header(self) -> bytes:
        """The receipts' protected header, encoded once (it names only the algorithm and key)."""
        header = {"alg": "EdDSA", "kid": self.kid, "typ": RECEIPT_TYPE}
        return base64.urlsafe_b64encode(orjson.dumps(header, option=orjson.OPT_SORT_KEYS)).rstrip(
            b"="
        )

    def sign_note(self, body: str) -> str:
        """A signed note: ``body`` (newline-terminated lines), a blank line, our signature."""
        if not body.endswith("\n"):
            raise ValueError("a note body ends with a newline")
        sig = self.key.sign(body.encode())
        blob = base64.b64encode(note_key_id(self.origin, self.public) + sig).decode()
        return f"{body}\n{_EM_DASH} {self.origin} {blob}\n"

    def receipt(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RFC 7515 section 7.1, EdDSA) over ``claims`` (JSON values: str, int,
        float, bool, None, lists and dicts of them).

        Encoded here rather than by ``jwt.encode``: one is signed for every answer, and PyJWT
        rebuilt the header, its key id and both JSON documents each time (~3x the Ed25519
        signature itself). The tokens are byte-identical to PyJWT's (a test holds it) and are
        verified with PyJWT (``verify_receipt``)."""
        signing_input = (
            self._receipt_header
            + b"."
            + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
        )
        signature = base64.urlsafe_b64encode(self.key.sign(signing_input)).rstrip(b"=")
        return (signing_input + b"." + signature).decode()


def verify_note(note: str, origin: str, publics: list[bytes]) -> str | None:
    """The body of ``note`` if one of its signature lines verifies under one of ``publics``."""
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        return None
    body += "\n"
    for line in sigs.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or parts[1] != origin:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError:
            continue
        for public in publics:
            if blob[:4] != note_key_id(origin, public):
                continue
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], body.encode())
            except InvalidSignature:
                continue
            return body
    return None


def parse_checkpoint(body: str) -> tuple[str, int, bytes]:
    """(origin, tree size, root hash) from a checkpoint body (C2SP tlog-checkpoint)."""
    lines = body.split("\n")
    if len(lines) < 4 or not lines[1].isdigit():
        raise ValueError("not a checkpoint body")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise ValueError("checkpoint root is not a SHA-256 hash")
    return lines[0], int(lines[1]), root


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The C2SP checkpoint body: origin, decimal size, base64 root, each newline-terminated."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def verify_receipt(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The claims of a receipt whose signature verifies with a key of ``jwks``; raises
    ``jwt.InvalidTokenError`` otherwise (unknown key, bad signature, wrong type)."""
    header = jwt.get_unverified_header(token)
    if header.get("typ") != RECEIPT_TYPE or header.get("alg") != "EdDSA":
        raise jwt.InvalidTokenError("not a Provenant receipt")
    for jwk in jwks.get("keys", []):
        if jwk.get("kid") == header.get("kid") and jwk.get("crv") == "Ed25519":
            public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
            claims: dict[str, Any] = jwt.decode(
                token, public, algorithms=["EdDSA"], options={"verify_iat": False}
            )
            return claims
    raise jwt.InvalidTokenError(f"no key {header.get('kid')!r} in the JWKS")
