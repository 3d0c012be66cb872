"""Policy evaluation: a pure function of a decision input, compiled once per bundle.

``Engine(bundle)`` compiles every check (regexes, PII detectors, word sets); ``pre`` and
``post`` evaluate the policies that apply to a request's route, route kind and tenant and return
their decisions, the first blocking one, and what to redact. No I/O happens here: what the
registry said about the model and what retrieval returned come in the ``Facts``; the checks
themselves are in ``policies.checks``.

The per-answer values (``Facts``, ``Result``, ``Decision``, ``Outcome``, ``Storage``) are
slotted objects nothing changes once built. They are not declared frozen: a frozen
dataclass's ``__init__`` sets each field through ``object.__setattr__`` and costs about four
times as much, which a bundle of ten policies would pay some twenty times per answer. Most
decisions are the same from answer to answer (a pass with nothing to say, a check that does not
apply, a content mode or retention class in force): their checks return a shared ``Result`` and
the decision, its row template and its public view are built once per compiled policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.integrity import leaf
from service.policies import pii
from service.policies.bundle import Action, Bundle, ContentMode, Pii, Policy, Retention, Stage
from service.policies.checks import CheckFn, Facts, Result, compile_check

# outcomes a decision records
PASS = "pass"  # noqa: S105 (an outcome, not a password)
FLAGGED = "flagged"
BLOCKED = "blocked"
REDACTED = "redacted"
SKIPPED = "skipped"  # the check does not apply to this answer (e.g. citations on a plain route)
APPLIED = "applied"  # content_mode: the storage mode in force

_OUTCOME = {Action.block: BLOCKED, Action.flag: FLAGGED, Action.redact: REDACTED}


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
    # the outcome itself when there is nothing to redact (no per-answer redactor): one object
    # for every answer that gets this verdict (nothing changes an Outcome once built)
    fixed: Outcome | None = None

    @classmethod
    def of(cls, compiled: Sequence[_Compiled], decisions: Sequence[Decision]) -> _Verdict:
        blocked = next((d for d in decisions if d.outcome == BLOCKED), None)
        redactors = tuple(
            c.redactor
            for c, d in zip(compiled, decisions, strict=True)
            if d.outcome == REDACTED and c.redactor is not None
        )
        parts = (
            tuple(decisions),
            blocked,
            redactors,
            tuple(d.view for d in decisions),
            tuple(d.leaf for d in decisions),
            tuple(d.count for d in decisions),
        )
        fixed = None
        if not redactors:
            fixed = Outcome(parts[0], blocked, None, parts[3], parts[4], parts[5])
        return cls(*parts, fixed)

    def outcome(self, memo: pii.Memo) -> Outcome:
        if self.fixed is not None:
            return self.fixed
        return Outcome(
            self.decisions,
            self.blocked,
            _redactor(self.redactors, memo),
            self.views,
            self.leaves,
            self.counts,
        )


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

    __slots__ = ("_memo", "compiled", "stage")

    MEMO_SIZE = 256  # combinations kept per stage; past it a verdict is built per answer

    def __init__(self, stage: Stage, compiled: list[_Compiled]) -> None:
        self.stage = stage
        self.compiled = compiled
        # each key is the ids of shared results, which live as long as the compiled checks
        # that hold them (so no id in a key can be reused by another object meanwhile)
        self._memo: dict[tuple[int, ...], _Verdict] = {}

    def run(self, facts: Facts) -> Outcome:
        compiled = self.compiled
        stage = self.stage
        results = [c.run(facts, stage) for c in compiled]
        key = tuple(map(id, results))
        # a key holds only ids of shared results, alive as long as this stage: a result built
        # for this answer is alive too, so its id is in no key and a hit means all are shared
        verdict = self._memo.get(key)
        if verdict is not None:
            return verdict.outcome(facts.memo)
        if all(r.shared for r in results):
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
            _Stage(Stage.pre, pre),
            _Stage(Stage.post, post),
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
                compile_check(p),
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
