"""Policy evaluation: a pure function of a decision input, compiled once per bundle.

``Engine(bundle)`` compiles every check (regexes, PII detectors, word sets); ``pre`` and
``post`` evaluate the policies that apply to a request's route, route kind and tenant and return
their decisions, the first blocking one, and what to redact. No I/O happens here: what the
registry said about the model and what retrieval returned come in the ``Facts``.

The per-answer values (``Facts``, ``Result``, ``Decision``, ``Outcome``, ``Storage``) are
slotted objects nothing changes once built. They are not declared frozen: a frozen
dataclass's ``__init__`` sets each field through ``object.__setattr__`` and costs about four
times as much, which a bundle of ten policies would pay some twenty times per answer. Most
decisions are the same from answer to answer (a pass with nothing to say, a check that does not
apply, a content mode or retention class in force): their checks return a shared ``Result`` and
the decision, its row template and its public view are built once per compiled policy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.integrity import leaf
from service.policies import pii
from service.policies.bundle import (
    RAG_KINDS,
    Action,
    ApprovedModel,
    BlockedTerms,
    Bundle,
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

# outcomes a decision records
PASS = "pass"  # noqa: S105 (an outcome, not a password)
FLAGGED = "flagged"
BLOCKED = "blocked"
REDACTED = "redacted"
SKIPPED = "skipped"  # the check does not apply to this answer (e.g. citations on a plain route)
APPLIED = "applied"  # content_mode: the storage mode in force

_OUTCOME = {Action.block: BLOCKED, Action.flag: FLAGGED, Action.redact: REDACTED}


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


class Decision:
    """One policy's decision about one answer: the policy, its hash, the outcome and its detail,
    with the answer-independent part of its ``policy_decisions`` row (``row`` adds the record
    id) and ``view``, the decision as ``provenance.policies`` shows it.

    A decision from a shared result (``Result.shared``) is itself shared by every answer that
    gets it: nothing may change it, its detail or its view."""

    __slots__ = (
        "count",
        "detail",
        "leaf",
        "outcome",
        "policy",
        "policy_sha256",
        "template",
        "view",
    )

    def __init__(self, compiled: _Compiled, outcome: str, detail: dict[str, Any] | None) -> None:
        policy = self.policy = compiled.policy
        self.policy_sha256 = compiled.sha256
        self.outcome = outcome
        self.detail = detail
        self.template = {**compiled.row_base, "outcome": outcome, "detail": detail}
        self.view = {**compiled.public_base, "outcome": outcome, "detail": detail}
        stage = policy.stage.value
        # what the record's leaf holds of it (integrity.leaf), and its metric's labels
        self.leaf = leaf.decision_entry(policy.id, stage, compiled.sha256, outcome, detail)
        self.count = (policy.id, stage, outcome)

    def row(self, record_id: Any) -> dict[str, Any]:
        """The ``policy_decisions`` row of this decision about record ``record_id``."""
        return {**self.template, "record_id": record_id}

    def __repr__(self) -> str:
        return f"Decision({self.policy.id!r}, {self.outcome!r}, {self.detail!r})"


@dataclass(slots=True)
class Outcome:
    """The decisions of one stage, the first block among them, and the redactor to apply;
    with what the answer shows of them (``views``), what its record's leaf holds (``leaves``)
    and their metric labels (``counts``), in the decisions' order."""

    decisions: Sequence[Decision]
    blocked: Decision | None = None
    redact: Callable[[str], str] | None = None
    views: Sequence[dict[str, Any]] = ()
    leaves: Sequence[list[Any]] = ()
    counts: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A stage's outcome without its per-answer redactor: what ``Outcome`` is built from, and
    what a stage whose checks all gave shared results gets from the stage's memo."""

    decisions: tuple[Decision, ...]
    blocked: Decision | None
    redactors: tuple[pii.Detector, ...]
    views: tuple[dict[str, Any], ...]
    leaves: tuple[list[Any], ...]
    counts: tuple[tuple[str, str, str], ...]

    @classmethod
    def of(cls, compiled: Sequence[_Compiled], decisions: Sequence[Decision]) -> _Verdict:
        blocked = next((d for d in decisions if d.outcome == BLOCKED), None)
        redactors = tuple(
            c.redactor
            for c, d in zip(compiled, decisions, strict=True)
            if d.outcome == REDACTED and c.redactor is not None
        )
        return cls(
            tuple(decisions),
            blocked,
            redactors,
            tuple(d.view for d in decisions),
            tuple(d.leaf for d in decisions),
            tuple(d.count for d in decisions),
        )

    def outcome(self, memo: pii.Memo) -> Outcome:
        return Outcome(
            self.decisions,
            self.blocked,
            _redactor(self.redactors, memo),
            self.views,
            self.leaves,
            self.counts,
        )


# --- checks ---------------------------------------------------------------------------------

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


def _compile(policy: Policy) -> CheckFn:
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


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    policy: Policy
    sha256: str
    run: CheckFn
    redactor: pii.Detector | None
    row_base: dict[str, Any] = field(default_factory=dict)
    public_base: dict[str, Any] = field(default_factory=dict)
    # the decisions of this policy's shared results, by the result's id (each shared result is
    # held by the compiled check or the module for as long as this lives)
    shared: dict[int, Decision] = field(default_factory=dict)
    # what a failed check records (content_mode and retention only ever apply)
    failed: str = field(init=False)
    applies_only: bool = field(init=False)

    def __post_init__(self) -> None:
        p = self.policy
        object.__setattr__(self, "failed", _OUTCOME[p.action or Action.flag])
        object.__setattr__(self, "applies_only", isinstance(p.check, ContentMode | Retention))
        self.row_base.update(policy_id=p.id, stage=p.stage.value, policy_sha256=self.sha256)
        self.public_base.update(
            id=p.id,
            stage=p.stage.value,
            severity=p.severity,
            frameworks=list(p.frameworks),
            sha256=self.sha256,
        )

    def decide(self, result: Result) -> Decision:
        """This policy's decision on a check's result (remembered if the result is shared)."""
        detail = result.detail
        if result.failed is None:
            outcome = SKIPPED
        elif self.applies_only:
            outcome = APPLIED
        elif result.failed:
            outcome = self.failed
            # what a violations report needs, even after the bundle has changed
            detail = {
                **(detail or {}),
                "severity": self.policy.severity,
                "frameworks": list(self.policy.frameworks),
            }
        else:
            outcome = PASS
        decision = Decision(self, outcome, detail)
        if result.shared:
            self.shared[id(result)] = decision
        return decision


@dataclass(slots=True)
class Storage:
    """How a record's prompt and answer are stored, and the redactor for ``redacted``."""

    mode: str = "full"
    redact: Callable[[str], str] | None = None


def _redactor(detectors: Sequence[pii.Detector], memo: pii.Memo) -> Callable[[str], str] | None:
    if not detectors:
        return None

    def redact(text: str) -> str:
        if not pii.may_hold(text):
            return text
        for detector in detectors:
            text, _ = detector.redact(text, memo)
        return text

    return redact


_MODE_RANK = {"full": 0, "redacted": 1, "hash_only": 2}


class _Stage:
    """The policies of one stage that apply to one route, route kind and tenant, with the
    verdicts of the answers whose checks all gave shared results (``Result.shared``), by
    those results: most answers get one of a few such combinations (nothing found, nothing
    that applies), so their decisions, views, leaf entries and metric labels are put
    together once, not for every answer."""

    __slots__ = ("_memo", "compiled")

    MEMO_SIZE = 256  # combinations kept per stage; past it a verdict is built per answer

    def __init__(self, compiled: list[_Compiled]) -> None:
        self.compiled = compiled
        # each key is the ids of shared results, which live as long as the compiled checks
        # that hold them (so no id in a key can be reused by another object meanwhile)
        self._memo: dict[tuple[int, ...], _Verdict] = {}

    def run(self, facts: Facts) -> Outcome:
        compiled = self.compiled
        results = [c.run(facts, c.policy.stage) for c in compiled]
        if all(r.shared for r in results):
            key = tuple(map(id, results))
            verdict = self._memo.get(key)
            if verdict is None:
                verdict = _Verdict.of(compiled, list(map(_Compiled.decide, compiled, results)))
                if len(self._memo) < self.MEMO_SIZE:
                    self._memo[key] = verdict
            return verdict.outcome(facts.memo)
        decisions = [
            (c.shared.get(id(r)) or c.decide(r)) if r.shared else c.decide(r)
            for c, r in zip(compiled, results, strict=True)
        ]
        return _Verdict.of(compiled, decisions).outcome(facts.memo)


@dataclass(frozen=True)
class _Scope:
    """The policies that apply to one route, route kind and tenant, by stage, and what they
    settle for every answer there: the storage mode (the strictest content_mode), its
    redactors, the retention class (the longest), whether a stream is held back."""

    pre: _Stage
    post: _Stage
    mode: str
    redactors: list[pii.Detector]
    retention: tuple[str, int] | None
    holds_stream: bool

    @classmethod
    def of(cls, hits: list[_Compiled]) -> _Scope:
        pre = [c for c in hits if c.policy.stage is Stage.pre]
        post = [c for c in hits if c.policy.stage is Stage.post]
        modes = [(c, c.policy.check) for c in pre if isinstance(c.policy.check, ContentMode)]
        mode = max((m.mode for _, m in modes), key=_MODE_RANK.__getitem__, default="full")
        classes = [c.policy.check for c in pre if isinstance(c.policy.check, Retention)]
        longest = max(classes, key=lambda r: r.days, default=None)
        return cls(
            _Stage(pre),
            _Stage(post),
            mode,
            [c.redactor for c, _ in modes if c.redactor is not None],
            None if longest is None else (longest.name, longest.days),
            any(c.policy.action in (Action.block, Action.redact) for c in post),
        )


class Engine:
    """A compiled bundle. ``pre``/``post`` are pure and safe to call from any task."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.sha256 = bundle.sha256
        self._compiled = [
            _Compiled(
                p,
                p.sha256,
                _compile(p),
                pii.Detector(p.check.kinds, p.check.phone_region, p.check.national_ids)
                if isinstance(p.check, Pii | ContentMode)
                else None,
            )
            for p in bundle.policies
        ]
        self._scopes: dict[tuple[str, str, str], _Scope] = {}

    def _scope(self, route: str, kind: str, tenant: str) -> _Scope:
        """What applies to a route, route kind and tenant, worked out once per triple."""
        key = (route, kind, tenant)
        found = self._scopes.get(key)
        if found is None:
            found = _Scope.of(
                [c for c in self._compiled if c.policy.applies_to.matches(route, kind, tenant)]
            )
            if len(self._scopes) < 10_000:
                self._scopes[key] = found
        return found

    def pre(self, facts: Facts) -> Outcome:
        """Decisions before the upstream is called (request, route, model)."""
        return self._scope(facts.route, facts.route_kind, facts.tenant).pre.run(facts)

    def post(self, facts: Facts) -> Outcome:
        """Decisions about the answer and its sources."""
        return self._scope(facts.route, facts.route_kind, facts.tenant).post.run(facts)

    def buffers_stream(self, route: str, kind: str, tenant: str) -> bool:
        """Whether a streamed answer must be held back until post-stage policies have run
        (some may block or redact it)."""
        return self._scope(route, kind, tenant).holds_stream

    def storage(self, route: str, kind: str, tenant: str, memo: pii.Memo | None = None) -> Storage:
        """The content mode in force: the strictest of the applicable content_mode policies
        (``memo``: the answer's scans, shared with its PII checks)."""
        scope = self._scope(route, kind, tenant)
        if scope.mode != "redacted":
            return Storage(scope.mode)
        return Storage(scope.mode, _redactor(scope.redactors, {} if memo is None else memo))

    def retention(self, route: str, kind: str, tenant: str) -> tuple[str, int] | None:
        """The retention class in force (name, days): the longest applicable one."""
        return self._scope(route, kind, tenant).retention
