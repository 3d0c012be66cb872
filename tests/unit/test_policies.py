"""The policy engine and each built-in check on its edge cases (pure: no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import InvalidPolicyBundle
from service.integrity import leaf
from service.policies import checks
from service.policies.bundle import Bundle, describe, load_bundle, problems
from service.policies.checks import Facts, Source, estimate_tokens
from service.policies.engine import (
    APPLIED,
    BLOCKED,
    FLAGGED,
    PASS,
    REDACTED,
    SKIPPED,
    Engine,
)
from service.policies.pii import Detector, may_hold

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def engine(*policies: dict[str, Any]) -> Engine:
    base = {"description": "test policy", "action": "flag"}
    return Engine(
        Bundle.model_validate(
            {
                "bundle": "t",
                "policies": [{"id": f"p{i}", **base, **p} for i, p in enumerate(policies)],
            }
        )
    )


def facts(**kw: Any) -> Facts:
    defaults: dict[str, Any] = {
        "route": "r",
        "route_kind": "openai",
        "tenant": "acme",
        "prompt": [],
    }
    return Facts(**{**defaults, **kw})


def one(engine: Engine, f: Facts, stage: str = "pre") -> tuple[str, dict[str, Any]]:
    out = engine.pre(f) if stage == "pre" else engine.post(f)
    assert len(out.decisions) == 1
    return out.decisions[0].outcome, out.decisions[0].detail


# --- personal data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.roe@example.org please", "email"),
        ("call +1 415 555 2671 tomorrow", "phone"),
        ("call (415) 555-2671 tomorrow", "phone"),
        ("ring +44 20 7946 0958", "phone"),
        ("card 4111 1111 1111 1111 expires", "payment_card"),
        ("card 5500-0000-0000-0004", "payment_card"),
        ("iban DE89 3704 0044 0532 0130 00 ok", "iban"),
        ("iban GB82WEST12345698765432", "iban"),
        ("ssn 536-90-4399", "national_id"),
        ("dni 12345678Z", "national_id"),
        ("cf RSSMRA85T10A562S", "national_id"),
    ],
)
def test_pii_detects_each_kind(text: str, kind: str) -> None:
    redacted, found = Detector().redact(text)
    assert [f.kind for f in found] == [kind]
    assert f"[{kind.upper()}]" in redacted
    assert not any(ch.isdigit() for ch in redacted.split("[")[1]) or kind == "email"


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails the Luhn check
        "iban DE89 3704 0044 0532 0130 01",  # wrong check digits
        "ssn 000-12-3456",  # area 000 is never issued
        "shipped on 2026-11-02, order 48213, 3 items",  # dates and short numbers
        "the ratio was 3.14159 and the year 1999",
        "no personal data here at all",
        "user@localhost is not an address",
    ],
)
def test_pii_ignores_lookalikes(text: str) -> None:
    assert Detector().find(text) == []


def test_pii_only_configured_kinds() -> None:
    text = "mail a@b.co, card 4111111111111111"
    assert [f.kind for f in Detector(["payment_card"]).find(text)] == ["payment_card"]
    with pytest.raises(ValueError, match="unknown"):
        Detector(["passport"])


def test_pii_check_records_counts_never_values() -> None:
    e = engine({"stage": "pre", "check": {"type": "pii"}})
    outcome, detail = one(e, facts(prompt=["a@b.co and c@d.org", "4111 1111 1111 1111"]))
    assert outcome == FLAGGED
    assert detail["found"] == {"email": 2, "payment_card": 1}
    assert "a@b.co" not in repr(detail) and "4111" not in repr(detail)
    assert one(e, facts(prompt=["nothing to see"]))[0] == PASS


def test_pii_redact_gives_a_redactor_and_post_reads_the_answer() -> None:
    e = engine({"stage": "post", "check": {"type": "pii"}, "action": "redact"})
    out = e.post(facts(prompt=["a@b.co"], answer="reach me at x@y.org"))
    assert out.decisions[0].outcome == REDACTED
    assert out.redact is not None and out.redact("reach me at x@y.org") == "reach me at [EMAIL]"
    # the post stage reads the answer, not the prompt
    assert e.post(facts(prompt=["a@b.co"], answer="fine")).decisions[0].outcome == PASS


# --- blocked terms, size -------------------------------------------------------------------


def test_blocked_terms_case_and_stage() -> None:
    e = engine(
        {"stage": "pre", "check": {"type": "blocked_terms", "patterns": [r"\bsecret\b", "xyz"]}},
        {
            "id": "cs",
            "stage": "post",
            "check": {"type": "blocked_terms", "patterns": ["Secret"], "case_sensitive": True},
            "action": "block",
        },
    )
    outcome, detail = one(e, facts(prompt=["the SECRET plan"]))
    assert outcome == FLAGGED and detail["patterns"] == [0]
    assert one(e, facts(prompt=["secretary"]))[0] == PASS  # word boundary
    assert one(e, facts(answer="a secret"), "post")[0] == PASS  # case-sensitive
    out = e.post(facts(answer="a Secret"))
    assert out.blocked is not None and out.blocked.outcome == BLOCKED


def test_max_input_tokens_boundary() -> None:
    e = engine(
        {"stage": "pre", "check": {"type": "max_input_tokens", "limit": 10}, "action": "block"}
    )
    assert estimate_tokens(["x" * 40]) == 10
    assert one(e, facts(prompt=["x" * 40]))[0] == PASS
    out = e.pre(facts(prompt=["x" * 20, "x" * 21]))
    assert out.blocked is not None and out.decisions[0].detail["estimated_tokens"] == 11


def test_a_violation_records_its_severity_and_frameworks_and_a_pass_does_not() -> None:
    e = engine(
        {
            "stage": "pre",
            "check": {"type": "max_input_tokens", "limit": 1},
            "action": "block",
            "severity": "high",
            "frameworks": ["EU-AI-Act:Art12"],
        }
    )
    blocked = e.pre(facts(prompt=["x" * 40])).decisions[0]
    assert blocked.detail is not None
    assert (blocked.detail["severity"], blocked.detail["frameworks"]) == (
        "high",
        ["EU-AI-Act:Art12"],
    )
    # the same estimate again gets the same (shared) decision, another estimate its own
    assert e.pre(facts(prompt=["x" * 40])).decisions[0] is blocked
    other = e.pre(facts(prompt=["x" * 44])).decisions[0]
    assert other.detail is not None and other.detail["estimated_tokens"] == 11
    assert blocked.detail["estimated_tokens"] == 10
    passed = e.pre(facts(prompt=["x"])).decisions[0]
    assert passed.outcome == PASS and passed.detail is not None
    assert "severity" not in passed.detail


def test_decisions_repeated_from_answer_to_answer_never_carry_one_answers_findings() -> None:
    e = engine(
        {"stage": "pre", "check": {"type": "pii", "kinds": ["email"]}},
        {"stage": "pre", "check": {"type": "content_mode", "mode": "redacted"}, "action": None},
        {"stage": "post", "check": {"type": "require_citations"}},
    )

    def answer(prompt: str) -> list[Any]:
        f = facts(prompt=[prompt])
        return e.pre(f).decisions + e.post(f.answered("ok")).decisions

    first, found, again = answer("hello"), answer("mail a@b.co"), answer("hello again")
    assert [d.outcome for d in first] == [PASS, APPLIED, SKIPPED]
    assert [d.outcome for d in found] == [FLAGGED, APPLIED, SKIPPED]
    assert found[0].detail == {
        "found": {"email": 1},
        "message": "personal data: ['email']",
        "severity": "medium",
        "frameworks": [],
    }
    assert [d.outcome for d in again] == [PASS, APPLIED, SKIPPED]
    assert again[0].detail is None
    # each record gets its own rows; the views are what provenance.policies shows
    rows = [d.row(n) for n, d in enumerate(first + again)]
    assert [r["record_id"] for r in rows] == list(range(6))
    assert [r["outcome"] for r in rows] == [PASS, APPLIED, SKIPPED] * 2
    assert again[1].view == {
        "id": "p1",
        "stage": "pre",
        "severity": "medium",
        "frameworks": [],
        "sha256": e.bundle.policies[1].sha256,
        "outcome": APPLIED,
        "detail": {"mode": "redacted"},
    }


# --- model, citations, grounding, staleness ------------------------------------------------


def test_approved_model_by_alias_or_tag() -> None:
    e = engine(
        {
            "stage": "pre",
            "check": {
                "type": "approved_model",
                "aliases": ["production"],
                "tags": {"validated": "true"},
            },
            "action": "block",
        }
    )
    model = {"name": "support-bot", "version": "7"}
    assert one(e, facts(model={**model, "alias": "production"}))[0] == PASS
    assert one(e, facts(model={**model, "aliases": ["staging", "production"]}))[0] == PASS
    assert one(e, facts(model={**model, "tags": {"validated": "true"}}))[0] == PASS
    assert (
        one(e, facts(model={**model, "alias": "staging", "tags": {"validated": "false"}}))[0]
        == BLOCKED
    )
    assert one(e, facts(model=None))[0] == BLOCKED  # no registry link fails closed by default
    lenient = engine(
        {
            "stage": "pre",
            "check": {
                "type": "approved_model",
                "aliases": ["production"],
                "allow_unregistered": True,
            },
        }
    )
    assert one(lenient, facts(model=None))[0] == SKIPPED


def test_require_citations() -> None:
    e = engine({"stage": "post", "check": {"type": "require_citations", "min_cited": 2}})
    rag = {"route_kind": "rag", "answer": "x"}
    assert one(e, facts(answer="x"), "post")[0] == SKIPPED  # not a RAG route
    assert one(e, facts(**rag, sources=[Source("a", cited=True)]), "post")[0] == FLAGGED
    two = [Source("a", cited=True), Source("b", cited=True), Source("c")]
    outcome, detail = one(e, facts(**rag, sources=two), "post")
    assert outcome == PASS and detail == {"cited": 2, "required": 2}
    assert one(e, facts(**rag, sources=[]), "post")[0] == FLAGGED


def test_grounding_threshold() -> None:
    e = engine(
        {"stage": "post", "check": {"type": "grounding", "threshold": 0.5, "min_overlap": 0.6}}
    )
    source = Source("Employees accrue twenty-five vacation days per calendar year of service.")
    grounded = "Employees accrue twenty-five vacation days per year [1]."
    invented = "Managers receive company cars with premium fuel cards."
    kw = {"route_kind": "extractive", "sources": [source]}
    assert one(e, facts(**kw, answer=grounded), "post")[0] == PASS
    outcome, detail = one(e, facts(**kw, answer=f"{grounded} {invented}"), "post")
    assert outcome == PASS and detail["share"] == 0.5  # exactly the threshold passes
    outcome, detail = one(e, facts(**kw, answer=f"{grounded} {invented} {invented}"), "post")
    assert outcome == FLAGGED and detail["supported"] == 1 and detail["sentences"] == 3
    assert one(e, facts(**kw, answer="Yes."), "post")[0] == SKIPPED  # nothing to check
    assert one(e, facts(answer=grounded), "post")[0] == SKIPPED  # not a RAG route


def test_stale_sources_cited_only() -> None:
    any_stale = engine({"stage": "post", "check": {"type": "stale_sources"}})
    cited_stale = engine({"stage": "post", "check": {"type": "stale_sources", "cited_only": True}})
    sources = [Source("a", cited=True), Source("b", superseded=True)]
    kw = {"route_kind": "rag", "sources": sources, "answer": "a [1]"}
    outcome, detail = one(any_stale, facts(**kw), "post")
    assert outcome == FLAGGED and detail["stale_refs"] == [2]
    assert one(cited_stale, facts(**kw), "post")[0] == PASS


def test_content_mode_strictest_wins() -> None:
    e = engine(
        {"stage": "pre", "check": {"type": "content_mode", "mode": "full"}, "action": None},
        {
            "id": "red",
            "stage": "pre",
            "check": {"type": "content_mode", "mode": "redacted"},
            "action": None,
        },
    )
    storage = e.storage("r", "openai", "acme")
    assert storage.mode == "redacted" and storage.redact is not None
    assert storage.redact("x@y.org") == "[EMAIL]"
    assert [d.outcome for d in e.pre(facts()).decisions] == [APPLIED, APPLIED]
    assert engine().storage("r", "openai", "acme").mode == "full"


def test_applies_to_and_stream_holding() -> None:
    e = engine(
        {
            "stage": "post",
            "check": {"type": "pii"},
            "action": "block",
            "applies_to": {"routes": ["a"]},
        },
        {"id": "t", "stage": "post", "check": {"type": "pii"}, "applies_to": {"tenants": ["acme"]}},
    )
    assert e.buffers_stream("a", "openai", "other")
    assert not e.buffers_stream("b", "openai", "acme")  # only a flag applies there
    assert len(e.post(facts(route="b", tenant="other", answer="x")).decisions) == 0


# --- bundle files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "finance", "healthcare", "eu-ai-act"])
def test_shipped_bundles_are_valid_and_explained(name: str) -> None:
    bundle = load_bundle(POLICIES / f"{name}.yaml")
    assert bundle.bundle == name and bundle.policies
    for policy in bundle.policies:
        text = describe(policy)
        assert policy.id in text and policy.sha256 in text
    assert name in (POLICIES / "README.md").read_text()


def test_bundle_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    text = """bundle: bad
policies:
  - id: one
    description: x
    stage: pre
    check: {type: pii, kindz: [email]}
    action: flag
  - id: two
    description: y
    stage: pre
    check:
      type: require_citations
    action: flag
  - id: three
    description: z
    stage: post
    check: {type: blocked_terms, patterns: ["("]}
    action: flag
    colour: red
"""
    path.write_text(text)
    found = problems(path, text)
    assert f"{path}:6: policies.0.check.kindz: unknown key" in found
    assert f"{path}:19: policies.2.colour: unknown key" in found
    assert any(p.startswith(f"{path}:8: policies.1: ") and "stage post" in p for p in found)
    assert any(p.startswith(f"{path}:17: policies.2.check.patterns:") for p in found)
    assert len(found) == 4, found
    with pytest.raises(InvalidPolicyBundle) as exc:
        load_bundle(path)
    assert exc.value.status == 422 and "kindz" in exc.value.message


def test_bundle_rejects_duplicates_bad_yaml_and_misplaced_actions(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    dup = {
        "bundle": "b",
        "policies": [
            {
                "id": "x",
                "description": "d",
                "stage": "pre",
                "check": {"type": "pii"},
                "action": "flag",
            }
        ]
        * 2,
    }
    assert any("duplicate policy id" in p for p in problems(path, yaml.safe_dump(dup)))
    assert problems(path, "bundle: [unclosed")[0].startswith(f"{path}:1: invalid YAML")
    redact_terms = {
        "bundle": "b",
        "policies": [
            {
                "id": "x",
                "description": "d",
                "stage": "pre",
                "check": {"type": "blocked_terms", "patterns": ["a"]},
                "action": "redact",
            }
        ],
    }
    assert any("redact applies to pii" in p for p in problems(path, yaml.safe_dump(redact_terms)))


def test_hashes_change_with_content_only() -> None:
    a = engine({"stage": "pre", "check": {"type": "max_input_tokens", "limit": 10}})
    b = engine({"stage": "pre", "check": {"type": "max_input_tokens", "limit": 10}})
    c = engine({"stage": "pre", "check": {"type": "max_input_tokens", "limit": 11}})
    assert a.sha256 == b.sha256 != c.sha256
    assert a.bundle.policies[0].sha256 != c.bundle.policies[0].sha256


def test_a_stage_outcome_lists_views_leaf_entries_and_labels_in_its_decisions_order() -> None:
    e = engine(
        {"stage": "pre", "check": {"type": "pii", "kinds": ["email"]}, "action": "redact"},
        {"stage": "pre", "check": {"type": "content_mode", "mode": "redacted"}, "action": None},
        {"stage": "pre", "check": {"type": "max_input_tokens", "limit": 5}, "action": "block"},
        {"stage": "pre", "check": {"type": "blocked_terms", "patterns": ["secret"]}},
    )
    seen = []
    # nothing found (every result shared), twice; then an address, a long prompt, a term
    for prompt in ("hello", "hello", "mail a@b.co", "x" * 40, "a secret"):
        out = e.pre(facts(prompt=[prompt]))
        seen.append(out)
        assert list(out.views) == [d.view for d in out.decisions]
        assert list(out.counts) == [(d.policy.id, "pre", d.outcome) for d in out.decisions]
        assert list(out.leaves) == [
            leaf.decision_entry(d.policy.id, "pre", d.policy_sha256, d.outcome, d.detail)
            for d in out.decisions
        ]
        assert out.blocked is next((d for d in out.decisions if d.outcome == BLOCKED), None)
    outcomes = [[d.outcome for d in out.decisions] for out in seen]
    assert outcomes == [
        [PASS, APPLIED, PASS, PASS],
        [PASS, APPLIED, PASS, PASS],
        [REDACTED, APPLIED, PASS, PASS],
        [PASS, APPLIED, BLOCKED, PASS],
        [PASS, APPLIED, PASS, FLAGGED],
    ]
    assert seen[0].redact is None and seen[1].redact is None
    # the redactor of an answer that found something reads that answer's scans
    redact = seen[2].redact
    assert redact is not None and redact("mail a@b.co") == "mail [EMAIL]"
    assert seen[3].blocked is not None and seen[3].blocked.detail["estimated_tokens"] == 10


def test_token_estimates_past_the_shared_bound_are_decided_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "_MAX_SHARED_ESTIMATES", 2)
    e = engine({"stage": "pre", "check": {"type": "max_input_tokens", "limit": 3}})
    for _ in range(2):  # the first two estimates are shared, the later ones built each time
        for chars, tokens in ((4, 1), (8, 2), (12, 3), (16, 4), (20, 5)):
            outcome, detail = one(e, facts(prompt=["x" * chars]))
            assert detail["estimated_tokens"] == tokens
            assert outcome == (FLAGGED if tokens > 3 else PASS)


def test_may_hold_needs_a_digit_or_an_at_sign_and_six_characters() -> None:
    assert not may_hold("Say hello to the benchmark.")
    assert not may_hold("a@b.c") and may_hold("a@b.co")
    assert may_hold("call 555") and may_hold("call \u0665\u0665\u0665")  # any Unicode digit
    assert Detector(["phone"]).find("no digits here at all") == []
