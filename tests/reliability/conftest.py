"""The reliability suite: faults a production gateway meets (killed processes, a database
that goes away, misbehaving upstreams, clients that leave), each checked Jepsen-style against
what clients were told. Every scenario reports its counts on one line (printed at once and
again in the terminal summary): requests sent, answers acknowledged, records found,
mismatches (an acknowledged answer without its committed record, or whose record differs)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

_LINES = pytest.StashKey[list[str]]()


def ask(client: openai.OpenAI, prompt: str, *, stream: bool) -> tuple[str, dict[str, Any]]:
    """Ask the ``echo`` route as an app would, whole or streamed: (the text the client got,
    the extra fields of the answer or of its last chunk, where ``provenance`` is)."""
    messages: Any = [{"role": "user", "content": prompt}]
    if stream:
        chunks = list(client.chat.completions.create(model="echo", messages=messages, stream=True))
        got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return got, (chunks[-1].model_extra or {}) if chunks else {}
    answer = client.chat.completions.create(model="echo", messages=messages)
    return answer.choices[0].message.content or "", answer.model_extra or {}


@dataclass
class Tally:
    """One scenario's counts."""

    scenario: str
    sent: int = 0
    acknowledged: int = 0
    records: int = 0
    mismatches: int = 0
    notes: dict[str, int | float | str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (
            f"[reliability] {self.scenario}: requests sent {self.sent}, answers acknowledged "
            f"{self.acknowledged}, records found {self.records}, mismatches {self.mismatches}"
            f"{extra}"
        )


@pytest.fixture
def tally(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Tally]:
    """The scenario's counts, reported when the test ends (passed or not)."""
    counts = Tally(request.node.name)
    yield counts
    line = counts.line()
    with capsys.disabled():
        print(f"\n{line}")
    request.config.stash.setdefault(_LINES, []).append(line)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_LINES, [])
    if lines:
        terminalreporter.section("reliability counts")
        for line in lines:
            terminalreporter.write_line(line)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
