"""What a report is once built: a header that makes it stand on its own as evidence, its
tables and its charts. Renderers turn this into JSON, CSV, HTML or PDF."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.reports.kinds import Kind, Section


@dataclass
class Table:
    """One section's rows (dicts keyed by the section's column names)."""

    section: Section
    rows: list[dict[str, Any]]
    note: str | None = None


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: a label and stacked values (series name → value)."""

    label: str
    values: dict[str, float]


@dataclass(frozen=True)
class Chart:
    """A stacked bar chart (rendered as inline SVG in HTML and PDF)."""

    title: str
    series: tuple[str, ...]
    bars: tuple[Bar, ...]


@dataclass
class Report:
    kind: Kind
    title: str
    header: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def table(self, key: str) -> Table:
        return next(t for t in self.tables if t.section.key == key)
