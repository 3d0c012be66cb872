"""The report column sets are documented: the README lists every kind, section and column."""

from __future__ import annotations

from pathlib import Path

from service.reports.kinds import SECTIONS, Kind

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_documents_every_report_column() -> None:
    for kind in Kind:
        start = README.index(f"**`{kind.value}`**")
        end = README.find("**`", start + 5)
        block = README[start : end if end > 0 else None]
        for section in SECTIONS[kind]:
            assert f"`{section.key}` — {section.title}" in block, (kind, section.key)
            for column, meaning in section.columns:
                assert f"`{column}` {meaning}" in block, (kind, section.key, column)
