"""Secrets the suite hands out (API keys, the upstream key), the logs it produced, and the scan
that proves none of them was stored or logged (run when a session database is torn down)."""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import MetaData, create_engine, select

# the key the `keyed` test route sends upstream (read from this variable at request time)
UPSTREAM_KEY_ENV = "PROVENANT_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = f"sk-upstream-{secrets.token_hex(16)}"

ISSUED: list[str] = []  # every API key a test created, in plaintext


class LogCapture(logging.Handler):
    """Every log line of the session, formatted as a log file would hold it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log call with bad arguments must not break the suite
            self.lines.append(repr(record.__dict__))


LOGS = LogCapture()


def scan(database_url: str) -> list[str]:
    """Where a secret the suite used is stored (table) or logged; empty when none is."""
    needles = [*ISSUED, UPSTREAM_KEY]
    found: list[str] = []
    engine = create_engine(database_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    text = " ".join(str(v) for v in row)
                    found.extend(f"{table.name}: {n[:12]}…" for n in needles if n in text)
    finally:
        engine.dispose()
    logs = "\n".join(LOGS.lines)
    found.extend(f"logs: {n[:12]}…" for n in needles if n in logs)
    return found
