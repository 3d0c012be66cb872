"""Pure pieces of the record: hashes, trace context, stream reassembly, request checks."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from service.errors import InvalidRequest
from service.gateway.requests import check_chat_request
from service.gateway.streaming import StreamAccumulator
from service.integrity import leaf
from service.lineage.models import RecordStatus
from service.lineage.records import (
    Exchange,
    answer_text,
    parse_traceparent,
    prompt_text,
    redact_json,
)
from service.policies.bundle import load_bundle
from service.policies.checks import Facts, Source
from service.policies.engine import Engine
from service.policies.pii import Detector
from service.tenancy.auth import Principal
from service.tenancy.models import Role

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_traceparent_is_parsed_and_invalid_ones_ignored() -> None:
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert parse_traceparent(f"00-{tid}-{sid}-01") == (tid, sid)
    assert parse_traceparent(f"00-{tid.upper()}-{sid}-01") == (tid, sid)
    for bad in (None, "", "garbage", f"00-{'0' * 32}-{sid}-01", f"00-{tid}-zzzzzzzzzzzzzzzz-01"):
        assert parse_traceparent(bad) == (None, None)


def test_prompt_text_is_stable_under_key_order() -> None:
    a = [{"role": "user", "content": "é"}]
    b = [{"content": "é", "role": "user"}]
    assert prompt_text(a) == prompt_text(b) == '[{"content":"é","role":"user"}]'


def test_answer_text_takes_the_first_choice_and_tolerates_tool_calls() -> None:
    assert answer_text([]) == ""
    assert answer_text([{"message": {"content": None, "tool_calls": []}}]) == ""
    assert answer_text([{"message": {"content": "a"}}, {"message": {"content": "b"}}]) == "a"


def test_stream_accumulator_rebuilds_each_choice() -> None:
    acc = StreamAccumulator()
    for chunk in (
        {
            "id": "c1",
            "model": "m",
            "created": 1,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}},
                {"index": 1, "delta": {"content": "B"}},
            ],
        },
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {
            "choices": [
                {"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "length"},
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ):
        acc.feed(chunk)
    choices = acc.choices()
    assert [c["message"]["content"] for c in choices] == ["Hello", "B"]
    assert [c["finish_reason"] for c in choices] == ["stop", "length"]
    assert acc.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert (acc.id, acc.model) == ("c1", "m")


def test_record_row_hashes_what_it_stores_and_keeps_params() -> None:
    principal = Principal(uuid.uuid4(), "p", uuid.uuid4(), "t", Role.app)
    body = {
        "model": "r",
        "messages": [{"role": "user", "content": "q"}],
        "seed": 3,
        "user": "u1",
        "tools": [{"type": "function"}],
    }
    ex = Exchange(principal, "r", "openai", body, "up")
    row = ex.record_row(
        status=RecordStatus.ok,
        http_status=200,
        latency_ms=1.23456,
        choices=[{"index": 0, "message": {"content": "ans"}, "finish_reason": "stop"}],
        usage={"prompt_tokens": 1, "completion_tokens": True, "total_tokens": 2},
    )
    assert row["answer_sha256"] == hashlib.sha256(b"ans").hexdigest()
    assert row["prompt_sha256"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
    assert row["params"] == {"seed": 3, "tools": [{"type": "function"}]}
    assert row["end_user"] == "u1"
    assert row["completion_tokens"] is None  # a bool is not a token count
    assert row["latency_ms"] == 1.235
    assert ex.id.version == 7


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user"}]},
        {"model": "", "messages": [{"role": "user"}]},
        {"model": "m", "messages": {"role": "user"}},
        {"model": "m", "messages": [{"content": "no role"}]},
        {"model": "m", "messages": [{"role": "user"}], "n": True},
        {"model": "m", "messages": [{"role": "user"}], "user": "x" * 257},
    ],
)
def test_check_chat_request_refuses(body: dict) -> None:
    with pytest.raises(InvalidRequest):
        check_chat_request(body)


def test_check_chat_request_accepts_a_full_openai_request() -> None:
    check_chat_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": None,
            "n": 3,
            "user": "u",
            "tools": [],
            "seed": 1,
        }
    )


def test_nul_from_an_upstream_is_stored_as_replacement_but_the_receipt_hashes_the_original() -> (
    None
):
    principal = Principal(uuid.uuid4(), "p", uuid.uuid4(), "t", Role.app)
    ex = Exchange(principal, "r", "openai", {"model": "r", "messages": []}, "m")
    choices = [{"index": 0, "message": {"role": "assistant", "content": "a\x00b"}}]
    row = ex.record_row(
        status=RecordStatus.ok,
        http_status=200,
        latency_ms=1.0,
        choices=choices,
        error_message="bad\x00",
        response_model="m\x00",
    )
    assert row["answer"] == "a\ufffdb" and "\x00" not in str(row["choices"])
    assert row["error_message"] == "bad\ufffd" and row["response_model"] == "m\ufffd"
    assert ex.delivered_sha256 == hashlib.sha256(b"a\x00b").hexdigest()
    assert row["answer_sha256"] == hashlib.sha256("a\ufffdb".encode()).hexdigest()


def test_a_nul_in_the_request_body_is_refused() -> None:
    import asyncio

    from service.gateway.requests import read_json_body

    body = b'{"model": "r", "messages": [{"role": "user", "content": "a\\u0000"}]}'

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    with pytest.raises(InvalidRequest, match="NUL"):
        asyncio.run(read_json_body(receive, None, 10_000))


def test_redact_json_redacts_every_string_at_any_depth_and_nothing_else() -> None:
    class Text(str):
        pass

    class Items(list):  # type: ignore[type-arg]
        pass

    value = {
        "role": "user",
        "n": [1, 2.5, True, None, {"deep": ["mail a@b.co", Text("sub")]}],
        "items": Items(["x", Text("y")]),
        "sub": Text("z"),
    }
    before = repr(value)
    out = redact_json(value, str.upper)
    assert out == {
        "role": "USER",
        "n": [1, 2.5, True, None, {"deep": ["MAIL A@B.CO", "SUB"]}],
        "items": ["X", "Y"],
        "sub": "Z",
    }
    assert repr(value) == before  # a copy: the request the upstream sees is untouched
    assert redact_json(Text("top"), str.upper) == "TOP" and redact_json(7, str.upper) == 7


def test_redact_json_copies_only_what_changes() -> None:
    clean = {"role": "system", "content": "be brief"}
    dirty = {"role": "user", "content": "mail a@b.co", "name": "ann"}
    messages = [clean, dirty]
    out = redact_json(messages, lambda s: s.replace("a@b.co", "[EMAIL]"))
    assert out == [clean, {"role": "user", "content": "mail [EMAIL]", "name": "ann"}]
    assert out is not messages and out[0] is clean  # the untouched message is shared
    assert dirty["content"] == "mail a@b.co"  # the original is never written to
    nothing = [{"role": "user", "content": "hello"}]
    assert redact_json(nothing, lambda s: s.replace("a@b.co", "[EMAIL]")) is nothing


def test_the_leaf_is_the_same_from_the_engines_decision_entries_or_from_the_rows() -> None:
    engine = Engine(load_bundle(POLICIES / "finance.yaml"))
    principal = Principal(uuid.uuid4(), "p", uuid.uuid4(), "t", Role.app)
    f = Facts("r", "rag", "t", ["q 4111 1111 1111 1111"], None, [Source("text", cited=True)])
    outcomes = [engine.pre(f), engine.post(f.answered("an answer [1]"))]
    ex = Exchange(principal, "r", "rag", {"model": "r", "messages": []}, "up")
    for out in outcomes:
        ex.decisions += [d.row(ex.id) for d in out.decisions]
        ex.decision_leaves = (ex.decision_leaves or []) + list(out.leaves)
    row = ex.record_row(status=RecordStatus.ok, http_status=200, latency_ms=1.0)
    doc = leaf.record_document(row, decisions=ex.decisions)  # as `provenant verify` does
    assert row["leaf_sha256"] == leaf.leaf_sha256(doc)
    assert len(doc["policies"]) == 11
    # the order is the leaf's (stage, then policy id), not the order the stages ran in
    assert [(e[1], e[0]) for e in doc["policies"]] == sorted(
        (e[1], e[0]) for e in ex.decision_leaves
    )


def test_a_redacted_store_redacts_a_prompt_with_personal_data_and_keeps_one_without() -> None:
    principal = Principal(uuid.uuid4(), "p", uuid.uuid4(), "t", Role.app)
    detector = Detector(["email"])
    for content, stored in (
        ("say hello", "say hello"),  # nothing a redactor could change
        ("call at 5 pm, not 555", "call at 5 pm, not 555"),  # digits, nothing found
        ("mail a@b.co", "mail [EMAIL]"),
    ):
        body = {"model": "r", "messages": [{"role": "user", "content": content}]}
        ex = Exchange(principal, "r", "openai", body, "up")
        ex.content_mode, ex.redact = "redacted", lambda s: detector.redact(s)[0]
        row = ex.record_row(status=RecordStatus.ok, http_status=200, latency_ms=1.0)
        assert row["prompt"] == prompt_text([{"role": "user", "content": stored}])
        assert row["prompt_sha256"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
