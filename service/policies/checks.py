"""The built-in checks: what each policy type looks at in one answer's facts, compiled once.

A check is a function of the decision input (``Facts``: request, route, model snapshot,
sources, answer) and the stage, returning a ``Result``: failed or not (None: it does not
apply), and why, never with the values it found. ``policies.engine`` turns results into
decisions. Results that fit many answers (a pass with nothing to say, a check that does not
apply, a detail fixed at compile time or by the token estimate alone) are shared objects
(``Result.shared``), so the engine builds their decisions once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.policies import pii
from service.policies.bundle import (
    RAG_KINDS,
    ApprovedModel,
    BlockedTerms,
    ContentMode,
    Grounding,
    MaxInputTokens,
    Pii,
    Policy,
    RequireCitations,
    Retention,
    Stage,
    StaleSources,
)


@dataclass(frozen=True, slots=True)
class Source:
    """One retrieved source as policies see it."""

    text: str
    cited: bool = False
    superseded: bool = False


@dataclass(slots=True)
class Facts:
    """Everything a policy may read about one answer (the decision input)."""

    route: str
    route_kind: str
    tenant: str
    prompt: Sequence[str]  # the text of each message
    model: Mapping[str, Any] | None = None  # the registry snapshot: alias(es), tags, version
    sources: Sequence[Source] = ()
    answer: str | None = None
    # scans of texts already looked at while evaluating this answer (shared by every PII check
    # and the storage redaction; ``replace`` keeps the same dict)
    memo: pii.Memo = field(default_factory=dict, compare=False, repr=False)

    def answered(self, answer: str) -> Facts:
        """The same facts with the answer (for the post stage; shares the memo).
        Cheaper than ``dataclasses.replace`` on the hot path."""
        return Facts(
            self.route,
            self.route_kind,
            self.tenant,
            self.prompt,
            self.model,
            self.sources,
            answer,
            self.memo,
        )


@dataclass(slots=True)
class Result:
    """What one check found: failed or not (None: does not apply), and why, without values.

    ``shared``: the same object answers for every answer it fits (a pass with nothing to say,
    a check that does not apply, a detail fixed when the bundle was compiled), so its decision
    is built once per compiled policy, not once per answer."""

    failed: bool | None
    detail: dict[str, Any] | None = None  # None: nothing to say (most passes)
    shared: bool = field(default=False, compare=False)


# the results most answers get, shared (see ``Result.shared``)
PASSED = Result(False, shared=True)
NOT_APPLICABLE = Result(None, shared=True)


CheckFn = Callable[[Facts, Stage], Result]


# --- the built-in checks ---------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]{3,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_STOP_WORDS = """the and for are but not you all any can had her was one our out has him his how
its may new now old see two way who did get let put say she too use with this that from they will
have been were what when which their there them then than into more some such only also each other
these those your about would could should"""
_STOP = frozenset(_STOP_WORDS.split())


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


_MAX_SHARED_ESTIMATES = 4096


def estimate_tokens(texts: Sequence[str]) -> int:
    """Tokens of a prompt, estimated as characters / 4 (no tokenizer download)."""
    return math.ceil(sum(len(t) for t in texts) / 4)


def _approved_model(check: ApprovedModel) -> CheckFn:
    unregistered = Result(None, {"message": "route has no registry link"}, shared=True)
    unserved = Result(True, {"message": "no registered model version serves this route"}, True)
    aliases = frozenset(check.aliases)
    tags = dict(check.tags)

    def run(facts: Facts, _: Stage) -> Result:
        model = facts.model
        if model is None:
            if check.allow_unregistered:
                return unregistered
            return unserved
        held = set(model.get("aliases") or ()) | ({model["alias"]} if model.get("alias") else set())
        model_tags = model.get("tags") or {}
        by_alias = bool(aliases & held)
        by_tags = bool(tags) and all(str(model_tags.get(k)) == v for k, v in tags.items())
        detail = {"model": model.get("name"), "version": model.get("version")}
        if by_alias or by_tags:
            return Result(False, detail)
        return Result(True, {**detail, "message": "model version is not approved"})

    return run


def _require_citations(check: RequireCitations) -> CheckFn:
    def run(facts: Facts, _: Stage) -> Result:
        if facts.route_kind not in RAG_KINDS:
            return NOT_APPLICABLE
        cited = sum(1 for s in facts.sources if s.cited)
        detail: dict[str, Any] = {"cited": cited, "required": check.min_cited}
        if cited < check.min_cited:
            detail["message"] = f"answer cites {cited} source(s), {check.min_cited} required"
            return Result(True, detail)
        return Result(False, detail)

    return run


def _grounding(check: Grounding) -> CheckFn:
    too_short = Result(None, {"message": "no sentence long enough to check"}, shared=True)

    def run(facts: Facts, _: Stage) -> Result:
        if facts.route_kind not in RAG_KINDS:
            return NOT_APPLICABLE
        sources = [_words(s.text) for s in facts.sources]
        sentences = [
            words
            for part in _SENTENCE.split(_CITATION.sub("", facts.answer or ""))
            if len(words := _words(part)) >= 3
        ]
        if not sentences:
            return too_short
        supported = sum(
            1
            for words in sentences
            if any(len(words & src) >= check.min_overlap * len(words) for src in sources)
        )
        share = supported / len(sentences)
        detail: dict[str, Any] = {
            "supported": supported,
            "sentences": len(sentences),
            "share": round(share, 4),
            "threshold": check.threshold,
        }
        if share < check.threshold:
            detail["message"] = f"{share:.0%} of sentences grounded, {check.threshold:.0%} required"
            return Result(True, detail)
        return Result(False, detail)

    return run


def _stale_sources(check: StaleSources) -> CheckFn:
    def run(facts: Facts, _: Stage) -> Result:
        if facts.route_kind not in RAG_KINDS:
            return NOT_APPLICABLE
        stale = [
            i + 1
            for i, s in enumerate(facts.sources)
            if s.superseded and (s.cited or not check.cited_only)
        ]
        if stale:
            return Result(
                True, {"stale_refs": stale, "message": f"{len(stale)} superseded source(s)"}
            )
        return PASSED

    return run


def _texts(facts: Facts, stage: Stage) -> Sequence[str]:
    if stage is Stage.pre:
        return facts.prompt
    return [facts.answer] if facts.answer else []


def _pii(check: Pii) -> CheckFn:
    detector = pii.Detector(check.kinds, check.phone_region, check.national_ids)

    def run(facts: Facts, stage: Stage) -> Result:
        found: list[pii.Finding] = []
        for text in _texts(facts, stage):
            if pii.may_hold(text):  # most text has no digit and no @: no call to find
                found.extend(detector.find(text, facts.memo))
        if found:
            kinds = pii.counts(found)
            return Result(True, {"found": kinds, "message": f"personal data: {sorted(kinds)}"})
        return PASSED

    return run


def _blocked_terms(check: BlockedTerms) -> CheckFn:
    flags = 0 if check.case_sensitive else re.IGNORECASE
    compiled = [re.compile(p, flags) for p in check.patterns]
    # one pass over the text for all patterns; the per-pattern passes only once one matched
    anyone = re.compile("|".join(f"(?:{p})" for p in check.patterns), flags)

    def run(facts: Facts, stage: Stage) -> Result:
        texts = _texts(facts, stage)
        if not any(anyone.search(t) for t in texts):
            return PASSED
        hits = [i for i, rx in enumerate(compiled) if any(rx.search(t) for t in texts)]
        if hits:
            return Result(True, {"patterns": hits, "message": f"{len(hits)} blocked pattern(s)"})
        return PASSED

    return run


def _max_input_tokens(check: MaxInputTokens) -> CheckFn:
    # the result depends on the estimate alone: one shared result per estimate seen, up to a
    # bound (never evicted: a shared result's id must not be reused while it is remembered)
    seen: dict[int, Result] = {}

    def run(facts: Facts, _: Stage) -> Result:
        tokens = estimate_tokens(facts.prompt)
        found = seen.get(tokens)
        if found is not None:
            return found
        detail: dict[str, Any] = {"estimated_tokens": tokens, "limit": check.limit}
        if tokens > check.limit:
            detail["message"] = f"prompt has about {tokens} tokens, limit {check.limit}"
        shared = len(seen) < _MAX_SHARED_ESTIMATES
        result = Result(tokens > check.limit, detail, shared)
        if shared:
            seen[tokens] = result
        return result

    return run


def _content_mode(check: ContentMode) -> CheckFn:
    applied = Result(False, {"mode": check.mode}, shared=True)

    def run(_: Facts, __: Stage) -> Result:
        return applied

    return run


def _retention(check: Retention) -> CheckFn:
    detail = {"class": check.name, "days": check.days, "legal_basis": check.legal_basis}
    applied = Result(False, detail, shared=True)

    def run(_: Facts, __: Stage) -> Result:
        return applied

    return run


def compile_check(policy: Policy) -> CheckFn:
    """The check of one policy, compiled (its regexes, detectors and word sets built once)."""
    check = policy.check
    match check:
        case ApprovedModel():
            return _approved_model(check)
        case RequireCitations():
            return _require_citations(check)
        case Grounding():
            return _grounding(check)
        case StaleSources():
            return _stale_sources(check)
        case Pii():
            return _pii(check)
        case BlockedTerms():
            return _blocked_terms(check)
        case MaxInputTokens():
            return _max_input_tokens(check)
        case ContentMode():
            return _content_mode(check)
        case Retention():
            return _retention(check)
    raise AssertionError(check)
