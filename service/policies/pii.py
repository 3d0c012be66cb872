"""Personal data in text: find it, and replace it with its kind (``[EMAIL]``).

Candidates are found by one compiled regular expression per kind, then confirmed by a validator
from a well-kept library where the format has a check: payment card numbers by the Luhn check,
IBANs by their ISO 7064 check digits and national ids by their own rules (python-stdnum), phone
numbers by Google's libphonenumber metadata (phonenumbers).

To stay cheap on the hot path, the per-kind expressions do not scan the whole text: one pass
finds runs of 7 or more digits (every numeric kind has them) and the ``@`` signs, and the kinds'
expressions run only in a window around each (``Pattern.finditer(text, pos, endpos)``, so
look-behinds still see the real text). Every kind needs a digit or an ``@``, so a text with
neither (most prose, role names, finish reasons) costs one search and is done.
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
# 7+ digits with at most 3 separators between neighbours: where any numeric kind can be
_DIGIT_RUN = re.compile(r"\d(?:[\s().+/-]{0,3}\d){6,}")
# every kind has a digit (cards, IBANs, phones, national ids) or an @ (email): ``\d`` as the
# kinds' own expressions read it (Unicode digits too)
_ANY_DIGIT = re.compile(r"\d")
_WINDOW = 12  # characters around a digit run (an IBAN's country code and check digits, a +)
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


def may_hold(text: str) -> bool:
    """Whether the text can hold personal data of any kind: every kind has a digit (cards,
    IBANs, phones, national ids) or an ``@`` (email) and six characters at least (a@b.co).
    Most prose and every role name or finish reason has neither: one search, done."""
    return len(text) >= 6 and ("@" in text or _ANY_DIGIT.search(text) is not None)


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


@dataclass(frozen=True, slots=True)
class _Scanner:
    """One shape of one kind: where to look, what to match, how to confirm it."""

    key: str
    kind: str
    rx: re.Pattern[str]
    check: Callable[[str], bool]
    where: str  # "digits" (near a digit run), "at" (near an @) or "all"


def _always(_: str) -> bool:
    return True


def _scanner(kind: str, name: str, phone_region: str = "US") -> _Scanner:
    if kind == "email":
        return _Scanner("email", kind, _EMAIL, _always, "at")
    if kind == "iban":
        return _Scanner("iban", kind, _IBAN, _iban, "digits")
    if kind == "payment_card":
        return _Scanner("payment_card", kind, _CARD, _card, "digits")
    if kind == "phone":
        return _Scanner(
            f"phone:{phone_region}", kind, _PHONE, partial(_phone, phone_region), "digits"
        )
    rx, check = NATIONAL_IDS[name]
    # the Italian codice fiscale has letters between short digit groups: looked for everywhere
    return _Scanner(
        f"national_id:{name}", kind, rx, check, "all" if name == "it_codice_fiscale" else "digits"
    )


class Scan:
    """One text's confirmed matches per scanner, shared by every detector that reads the same
    text while one answer is evaluated (a ``Memo``), so each shape is looked for once."""

    __slots__ = ("_hits", "_windows", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._windows: dict[str, list[tuple[int, int]]] = {}
        self._hits: dict[str, list[tuple[int, int]]] = {}

    def _where(self, where: str) -> list[tuple[int, int]]:
        found = self._windows.get(where)
        if found is not None:
            return found
        text = self.text
        spans: list[tuple[int, int]] = []
        if where == "all":
            spans = [(0, len(text))]
        elif where == "digits":
            spans = [
                (max(0, m.start() - _WINDOW), m.end() + _WINDOW) for m in _DIGIT_RUN.finditer(text)
            ]
        else:
            at = text.find("@")
            while at != -1:
                spans.append((max(0, at - 65), at + 256))
                at = text.find("@", at + 1)
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._windows[where] = merged
        return merged

    def near_digits_or_at(self) -> bool:
        """Whether the text has a digit run or an @ (where every kind but one can be)."""
        return bool(self._where("digits") or self._where("at"))

    def hits(self, scanner: _Scanner) -> list[tuple[int, int]]:
        """Spans this scanner's shape matches and its check confirms."""
        found = self._hits.get(scanner.key)
        if found is None:
            found = []
            for pos, endpos in self._where(scanner.where):
                for match in scanner.rx.finditer(self.text, pos, endpos):
                    if scanner.check(match.group()):
                        found.append(match.span())
            self._hits[scanner.key] = found
        return found


Memo = dict[str, Scan]  # text -> its scan, for the evaluation of one answer


class Detector:
    """Finds the configured kinds of personal data in text. Built once per policy."""

    def __init__(
        self,
        kinds: Iterable[str] = KINDS,
        phone_region: str = "US",
        national_ids: Iterable[str] = tuple(NATIONAL_IDS),
    ) -> None:
        self.kinds = tuple(kinds)
        national = tuple(national_ids)
        unknown = (set(self.kinds) - set(KINDS)) | (set(national) - set(NATIONAL_IDS))
        if unknown:
            raise ValueError(f"unknown PII kinds or national id formats: {sorted(unknown)}")
        # order matters where shapes overlap: the more specific shapes claim their spans first
        # (the dashed SSN before phone numbers, the loose digit-run id shapes after them)
        order: list[tuple[str, str]] = [("email", ""), ("iban", ""), ("payment_card", "")]
        order += [("national_id", n) for n in national if n == "us_ssn"]
        order += [("phone", "")]
        order += [("national_id", n) for n in national if n != "us_ssn"]
        self._scanners = tuple(_scanner(k, n, phone_region) for k, n in order if k in self.kinds)
        self._anywhere = tuple(s for s in self._scanners if s.where == "all")

    def find(self, text: str, memo: Memo | None = None) -> list[Finding]:
        """Every confirmed finding, non-overlapping, in text order. With a ``memo``, scans of
        the same text by other detectors are reused."""
        if not may_hold(text):
            return []
        scan = memo.get(text) if memo is not None else None
        if scan is None:
            scan = Scan(text)
            if memo is not None:
                memo[text] = scan
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        scanners = self._scanners
        if not scan.near_digits_or_at():
            scanners = self._anywhere  # most prose: no digit run and no @
        for scanner in scanners:
            for start, end in scan.hits(scanner):
                if any(start < e and s < end for s, e in taken):
                    continue
                found.append(Finding(scanner.kind, start, end))
                taken.append((start, end))
        found.sort(key=lambda f: f.start)
        return found

    def redact(self, text: str, memo: Memo | None = None) -> tuple[str, list[Finding]]:
        """The text with each finding replaced by ``[KIND]``, and the findings."""
        findings = self.find(text, memo)
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
