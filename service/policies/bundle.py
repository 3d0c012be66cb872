"""The policy bundle format: YAML a compliance team reads, reviews and versions.

A bundle is validated against this schema (unknown keys rejected) and every problem is reported
with its file, line and key path, so ``provenant policies validate`` and a refused start or
reload point at the exact place to fix.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError, InvalidPolicyBundle
from service.integrity.canonical import digest
from service.policies.pii import KINDS, NATIONAL_IDS

PiiKind = Literal["email", "phone", "national_id", "payment_card", "iban"]
NationalId = Literal[
    "us_ssn", "gb_nhs", "fr_nir", "es_dni", "it_codice_fiscale", "nl_bsn", "de_idnr"
]
ALL_KINDS: tuple[PiiKind, ...] = get_args(PiiKind)
ALL_NATIONAL_IDS: tuple[NationalId, ...] = get_args(NationalId)
assert set(ALL_KINDS) == set(KINDS) and set(ALL_NATIONAL_IDS) == set(NATIONAL_IDS)

RAG_KINDS = frozenset({"rag", "extractive", "rag-passthrough"})


class Stage(StrEnum):
    pre = "pre"  # before the upstream is called: the request, route and model
    post = "post"  # after the answer: the answer and its sources


class Action(StrEnum):
    block = "block"
    flag = "flag"
    redact = "redact"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovedModel(_Strict):
    """The serving model version must carry one of these MLflow aliases, or these tags."""

    type: Literal["approved_model"]
    aliases: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    allow_unregistered: bool = Field(
        default=False, description="skip routes with no registry link instead of failing them"
    )

    @model_validator(mode="after")
    def _something_to_check(self) -> ApprovedModel:
        if not self.aliases and not self.tags:
            raise ValueError("approved_model needs `aliases` or `tags`")
        return self


class RequireCitations(_Strict):
    """A RAG answer must cite at least ``min_cited`` of its retrieved sources."""

    type: Literal["require_citations"]
    min_cited: int = Field(default=1, ge=1, le=100)


class Grounding(_Strict):
    """Share of answer sentences supported by retrieved text must reach ``threshold``."""

    type: Literal["grounding"]
    threshold: float = Field(default=0.6, ge=0, le=1)
    min_overlap: float = Field(
        default=0.6, gt=0, le=1, description="share of a sentence's words found in one source"
    )


class StaleSources(_Strict):
    """No retrieved source may be a document version superseded at answer time."""

    type: Literal["stale_sources"]
    cited_only: bool = Field(default=False, description="only sources the answer cites count")


class Pii(_Strict):
    """Personal data in the prompt (``pre``) or the answer (``post``)."""

    type: Literal["pii"]
    kinds: list[PiiKind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    national_ids: list[NationalId] = Field(default_factory=lambda: list(ALL_NATIONAL_IDS))
    phone_region: str = Field(
        default="US", pattern=r"^[A-Z]{2}$", description="region for numbers without +"
    )


class BlockedTerms(_Strict):
    """Regular expressions that must not occur in the prompt (``pre``) or answer (``post``)."""

    type: Literal["blocked_terms"]
    patterns: list[str] = Field(min_length=1, max_length=500)
    case_sensitive: bool = False

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            if len(pattern) > 1000:
                raise ValueError(f"pattern {i} is longer than 1000 characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} is not a valid regular expression: {exc}") from exc
        return patterns


class MaxInputTokens(_Strict):
    """The prompt's estimated token count must not exceed ``limit``."""

    type: Literal["max_input_tokens"]
    limit: int = Field(ge=1)


class ContentMode(_Strict):
    """How the prompt and answer are stored: ``full``, ``redacted`` (PII replaced by its kind) or
    ``hash_only`` (only salted hashes)."""

    type: Literal["content_mode"]
    mode: Literal["full", "redacted", "hash_only"]
    kinds: list[PiiKind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    national_ids: list[NationalId] = Field(default_factory=lambda: list(ALL_NATIONAL_IDS))
    phone_region: str = Field(default="US", pattern=r"^[A-Z]{2}$")


class Retention(_Strict):
    """How long a record's content is kept: a named class, its days and its legal basis. The
    longest applicable class wins (every obligation is met); ``provenant retention run`` erases
    content after it, keeping the hashes. Records carry the class and their retain-until time."""

    type: Literal["retention"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="e.g. hipaa-6y")
    days: int = Field(ge=1, le=36500)
    legal_basis: str = Field(min_length=1, max_length=500)


Check = Annotated[
    ApprovedModel
    | RequireCitations
    | Grounding
    | StaleSources
    | Pii
    | BlockedTerms
    | MaxInputTokens
    | ContentMode
    | Retention,
    Field(discriminator="type"),
]

# which stages each check can run at (what it reads must exist by then)
STAGES: dict[str, frozenset[Stage]] = {
    "approved_model": frozenset(Stage),
    "require_citations": frozenset({Stage.post}),
    "grounding": frozenset({Stage.post}),
    "stale_sources": frozenset({Stage.post}),
    "pii": frozenset(Stage),
    "blocked_terms": frozenset(Stage),
    "max_input_tokens": frozenset({Stage.pre}),
    "content_mode": frozenset({Stage.pre}),
    "retention": frozenset({Stage.pre}),
}
# checks that set how the record is kept rather than judge the answer: no action
SETTINGS_CHECKS = frozenset({"content_mode", "retention"})


class AppliesTo(_Strict):
    """Where a policy applies; an empty list means every one."""

    routes: list[str] = Field(default_factory=list)
    route_kinds: list[str] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list, description="tenant names")

    def matches(self, route: str, route_kind: str, tenant: str) -> bool:
        return (
            (not self.routes or route in self.routes)
            and (not self.route_kinds or route_kind in self.route_kinds)
            and (not self.tenants or tenant in self.tenants)
        )


class Policy(_Strict):
    """One rule: where it applies, when, what it checks and what happens when it fails."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    description: str = Field(min_length=1, max_length=2000)
    applies_to: AppliesTo = AppliesTo()
    stage: Stage
    check: Check
    action: Action | None = None
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    frameworks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+:\S.*$", max_length=100)]] = (
        Field(default_factory=list)
    )

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        kind = self.check.type
        if self.stage not in STAGES[kind]:
            allowed = " or ".join(sorted(STAGES[kind]))
            raise ValueError(f"check {kind} runs at stage {allowed}, not {self.stage}")
        if kind in SETTINGS_CHECKS:
            if self.action not in (None, Action.redact):
                raise ValueError(f"{kind} takes no action (it sets how the record is kept)")
        elif self.action is None:
            raise ValueError("action is required (block, flag or redact)")
        elif self.action is Action.redact and kind != "pii":
            raise ValueError("action redact applies to pii checks only")
        return self

    @property
    def sha256(self) -> str:
        """Hash of the policy as validated (defaults filled in), over its canonical JSON."""
        return digest(self.model_dump(mode="json"))


class Bundle(_Strict):
    """A named set of policies, selected with ``PROVENANT_POLICY_BUNDLE``."""

    bundle: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    description: str = Field(default="", max_length=4000)
    policies: list[Policy] = Field(default_factory=list, max_length=1000)

    @field_validator("policies")
    @classmethod
    def _unique_ids(cls, policies: list[Policy]) -> list[Policy]:
        seen: set[str] = set()
        for policy in policies:
            if policy.id in seen:
                raise ValueError(f"duplicate policy id {policy.id!r}")
            seen.add(policy.id)
        return policies

    @property
    def sha256(self) -> str:
        """Hash of the bundle as validated: what every decision record names."""
        return digest(self.model_dump(mode="json"))


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that the error location reaches."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def problems(path: Path, text: str) -> list[str]:
    """Every problem of a bundle file as ``file:line: key: message`` (empty when valid)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        return [f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]
    if not isinstance(data, dict):
        return [f"{path}:1: a bundle is a mapping with `bundle` and `policies`"]
    try:
        Bundle.model_validate(data)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            # drop the discriminator tag pydantic inserts into the path of a union member
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in STAGES))
            key = ".".join(str(p) for p in loc) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            out.append(f"{path}:{_line_of(root, loc) or '?'}: {key}: {msg}")
        return out
    return []


def load_bundle(path: Path) -> Bundle:
    """Read and validate a bundle file; ConfigError lists every problem with file, line, key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"policy bundle {path}: cannot read: {exc.strerror}") from exc
    found = problems(path, text)
    if found:
        raise InvalidPolicyBundle("invalid policy bundle:\n" + "\n".join(found))
    return Bundle.model_validate(yaml.safe_load(text))


def _what(policy: Policy) -> str:
    check = policy.check
    text = "prompt" if policy.stage is Stage.pre else "answer"
    match check:
        case ApprovedModel():
            parts = [f"an alias in {check.aliases}"] if check.aliases else []
            parts += [f"the tags {check.tags}"] if check.tags else []
            return "the serving model version carries " + " or ".join(parts)
        case RequireCitations():
            return f"the answer cites at least {check.min_cited} retrieved source(s)"
        case Grounding():
            return (
                f"at least {check.threshold:.0%} of answer sentences share {check.min_overlap:.0%}"
                " of their words with one retrieved source"
            )
        case StaleSources():
            return "no source is a document version superseded at answer time"
        case Pii():
            return f"the {text} holds no {', '.join(check.kinds)}"
        case BlockedTerms():
            return f"the {text} matches none of {len(check.patterns)} blocked pattern(s)"
        case MaxInputTokens():
            return f"the prompt is at most {check.limit} tokens (estimated: characters / 4)"
        case ContentMode():
            return f"prompts and answers are stored as `{check.mode}`"
        case Retention():
            return (
                f"records are kept in class `{check.name}`: content for {check.days} days "
                f"({check.legal_basis}), then erased with hashes kept"
            )
    raise AssertionError(check)


def describe(policy: Policy) -> str:
    """What a policy does, in words (``provenant policies explain``)."""
    scope = policy.applies_to
    where = (
        ", ".join(
            f"{name} {values}"
            for name, values in (
                ("routes", scope.routes),
                ("route kinds", scope.route_kinds),
                ("tenants", scope.tenants),
            )
            if values
        )
        or "every route and tenant"
    )
    if policy.check.type in SETTINGS_CHECKS:
        effect = "applied when the record is written"
    else:
        effect = {
            Action.block: "the answer is refused (403 policy_blocked)",
            Action.flag: "the answer is delivered and the decision flagged",
            Action.redact: "the personal data is replaced by its kind before it goes further",
        }[policy.action or Action.flag]
    lines = [
        f"{policy.id} ({policy.severity}): {policy.description}",
        f"  applies to: {where}; stage: {policy.stage}",
        f"  checks that {_what(policy)}",
        f"  when it fails: {effect}",
        f"  frameworks: {', '.join(policy.frameworks) or '-'}",
        f"  sha256: {policy.sha256}",
    ]
    return "\n".join(lines)
