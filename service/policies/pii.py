"""Personal data in text: find it, and replace it with its kind (``[EMAIL]``).

Candidates are found by one compiled regular expression per kind, then confirmed by a validator
from a well-kept library where the format has a check: payment card numbers by the Luhn check,
IBANs by their ISO 7064 check digits and national ids by their own rules (python-stdnum), phone
numbers by Google's libphonenumber metadata (phonenumbers). Text without a candidate costs one
regex scan per kind, which keeps this on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import phonenumbers
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

KINDS = ("email", "phone", "national_id", "payment_card", "iban")

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
)
# 7 to 15 digits with the usual separators, optionally after a +
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\d\s().-]{5,18})\d(?![\w])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")
_CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
# national ids: the candidate shapes of the formats python-stdnum validates, by name
NATIONAL_IDS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "us_ssn": (re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)"), ssn.is_valid),
    "gb_nhs": (re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)"), nhs.is_valid),
    "fr_nir": (
        re.compile(
            r"(?<![\w])[12]\s?\d{2}\s?\d{2}\s?(?:\d{2}|2[AB])\s?\d{3}\s?\d{3}\s?\d{2}(?!\d)"
        ),
        nir.is_valid,
    ),
    "es_dni": (re.compile(r"(?<![\w])\d{8}-?[A-Z](?![\w])"), dni.is_valid),
    "it_codice_fiscale": (
        re.compile(r"(?<![\w])[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z](?![\w])"),
        codicefiscale.is_valid,
    ),
    "nl_bsn": (re.compile(r"(?<!\d)\d{9}(?!\d)"), bsn.is_valid),
    "de_idnr": (re.compile(r"(?<!\d)\d{2}\s?\d{3}\s?\d{3}\s?\d{3}(?!\d)"), idnr.is_valid),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of personal data: its kind and where it is (never its value, once reported)."""

    kind: str
    start: int
    end: int


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _card(value: str) -> bool:
    digits = _digits(value)
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def _iban(value: str) -> bool:
    try:
        iban.validate(value)
    except ValidationError:
        return False
    return True


def _phone(region: str, value: str) -> bool:
    digits = _digits(value)
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(value):
        return False
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


class Detector:
    """Finds the configured kinds of personal data in text. Built once per policy."""

    def __init__(
        self,
        kinds: Iterable[str] = KINDS,
        phone_region: str = "US",
        national_ids: Iterable[str] = tuple(NATIONAL_IDS),
    ) -> None:
        self.kinds = tuple(kinds)
        unknown = (set(self.kinds) - set(KINDS)) | (set(national_ids) - set(NATIONAL_IDS))
        if unknown:
            raise ValueError(f"unknown PII kinds or national id formats: {sorted(unknown)}")
        # the dashed SSN shape is specific; the loose digit-run shapes go after phone numbers
        strict = [NATIONAL_IDS[n] for n in national_ids if n == "us_ssn"]
        loose = [NATIONAL_IDS[n] for n in national_ids if n != "us_ssn"]
        scanners: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = []
        # every kind but email needs at least 7 digits (cheap to count, so most text skips them)
        # order matters where shapes overlap: the more specific shapes claim their spans first
        if "email" in self.kinds:
            scanners.append(("email", _EMAIL, lambda _: True))
        if "iban" in self.kinds:
            scanners.append(("iban", _IBAN, _iban))
        if "payment_card" in self.kinds:
            scanners.append(("payment_card", _CARD, _card))
        if "national_id" in self.kinds:
            scanners.extend(("national_id", rx, check) for rx, check in strict)
        if "phone" in self.kinds:
            scanners.append(("phone", _PHONE, partial(_phone, phone_region)))
        if "national_id" in self.kinds:
            scanners.extend(("national_id", rx, check) for rx, check in loose)
        self._email = tuple(s for s in scanners if s[0] == "email")
        self._numeric = tuple(s for s in scanners if s[0] != "email")

    def find(self, text: str) -> list[Finding]:
        """Every confirmed finding, non-overlapping, in text order."""
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        scanners = self._email if "@" in text else ()
        if sum(map(text.count, "0123456789")) >= 7:
            scanners += self._numeric
        for kind, rx, check in scanners:
            for match in rx.finditer(text):
                start, end = match.span()
                if any(start < e and s < end for s, e in taken):
                    continue
                if check(match.group()):
                    found.append(Finding(kind, start, end))
                    taken.append((start, end))
        found.sort(key=lambda f: f.start)
        return found

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        """The text with each finding replaced by ``[KIND]``, and the findings."""
        findings = self.find(text)
        if not findings:
            return text, findings
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(f"[{f.kind.upper()}]")
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts), findings


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each kind (what a decision records: never the values)."""
    out: dict[str, int] = {}
    for f in findings:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out
