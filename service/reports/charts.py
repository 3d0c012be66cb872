"""Stacked bar charts as inline SVG: no script, no network, prints and renders in PDF alike.
Hand-written because it is ~60 lines and a charting library would pull a browser runtime or a
plotting stack into the gateway for a handful of bars."""

from __future__ import annotations

from markupsafe import Markup, escape

from service.reports.model import Chart

# print-safe palette, distinguishable in greyscale too
COLOURS = ("#2b6cb0", "#c05621", "#718096", "#2f855a", "#9b2c2c", "#6b46c1")
_ROW = 22
_LABEL_W = 260
_BAR_W = 420


def svg(chart: Chart) -> Markup:
    """A horizontal stacked bar chart with a legend; an empty chart says so."""
    if not chart.bars:
        return Markup('<p class="empty">No data in the period.</p>')
    bars = chart.bars[:40]
    top = max((sum(b.values.values()) for b in bars), default=0) or 1
    height = 30 + _ROW * len(bars)
    width = _LABEL_W + _BAR_W + 80
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{escape(chart.title)}</title>"
    ]
    x = _LABEL_W
    for i, name in enumerate(chart.series):
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="13" font-size="11">{escape(name)}</text>'
        )
        x += 30 + 7 * len(name)
    for row, bar in enumerate(bars):
        y = 24 + row * _ROW
        label = bar.label if len(bar.label) <= 40 else bar.label[:39] + "…"
        parts.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 13}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        offset = float(_LABEL_W)
        for i, name in enumerate(chart.series):
            value = float(bar.values.get(name, 0))
            w = _BAR_W * value / top
            if w > 0:
                parts.append(
                    f'<rect x="{offset:.1f}" y="{y}" width="{w:.1f}" height="{_ROW - 6}" '
                    f'fill="{COLOURS[i % len(COLOURS)]}"><title>{escape(name)}: '
                    f"{value:g}</title></rect>"
                )
            offset += w
        total = sum(bar.values.values())
        parts.append(f'<text x="{offset + 4:.1f}" y="{y + 13}" font-size="11">{total:g}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text in it went through escape())
