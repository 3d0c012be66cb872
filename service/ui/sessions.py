"""Auditor sign-in sessions: a signed, expiring cookie that names the key by its prefix (never
the key itself) and carries the CSRF token of the session's forms.

Stateless, so any replica can check a session: the cookie is ``payload.mac`` with an HMAC-SHA256
under a secret derived from the log's signing key (every replica has the same one). On each
request the key is looked up again (cached for the key TTL), so a revoked key's session ends
within that TTL. Cookies are HttpOnly, SameSite=Strict and Secure (unless turned off for
plain-HTTP development); forms carry the CSRF token and POSTs must come from the same origin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

COOKIE = "provenant_ui"
LOGIN_COOKIE = "provenant_ui_login"  # the sign-in form's CSRF token, before any session exists


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A signed-in auditor: the key's prefix, the CSRF token, when it ends."""

    key_prefix: str
    csrf: str
    expires: float


class SessionSigner:
    """Issues and checks session and sign-in-form cookies."""

    def __init__(self, secret: bytes, ttl_s: float, *, secure: bool) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self.secure = secure

    @classmethod
    def from_signing_key(cls, private: bytes, ttl_s: float, *, secure: bool) -> SessionSigner:
        """The session secret: an HMAC of a fixed label under the log's private key bytes."""
        return cls(
            hmac.new(private, b"provenant ui session v1", hashlib.sha256).digest(),
            ttl_s,
            secure=secure,
        )

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def _seal(self, obj: dict[str, object]) -> str:
        payload = _b64(orjson.dumps(obj))
        return f"{payload}.{self._mac(payload)}"

    def _open(self, value: str | None) -> dict[str, object] | None:
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            obj = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("e"), int | float):
            return None
        if float(obj["e"]) < time.time():
            return None
        return obj

    def issue(self, key_prefix: str) -> tuple[str, Session]:
        session = Session(key_prefix, secrets.token_urlsafe(24), time.time() + self.ttl_s)
        value = self._seal({"k": key_prefix, "c": session.csrf, "e": session.expires})
        return value, session

    def check(self, value: str | None) -> Session | None:
        obj = self._open(value)
        if obj is None or not isinstance(obj.get("k"), str) or not isinstance(obj.get("c"), str):
            return None
        return Session(str(obj["k"]), str(obj["c"]), float(obj["e"]))  # type: ignore[arg-type]

    def login_token(self) -> tuple[str, str]:
        """(cookie value, token) for the sign-in form: valid for 30 minutes."""
        token = secrets.token_urlsafe(24)
        return self._seal({"l": token, "e": time.time() + 1800}), token

    def check_login(self, value: str | None, token: str) -> bool:
        obj = self._open(value)
        return obj is not None and hmac.compare_digest(str(obj.get("l", "")), token)
