"""Horizontal bar charts as inline SVG data, drawn by the template (``_chart.html``): no
script, nothing fetched, each chart labelled for screen readers and shown beside a table
of the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

BAR_HEIGHT = 18
GAP = 6
LABEL_WIDTH = 240
WIDTH = 640


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    y: int
    width: int


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    height: int
    label_width: int = LABEL_WIDTH
    width: int = WIDTH


def bars(title: str, values: list[tuple[str, float]], maximum: float | None = None) -> Chart:
    top = maximum if maximum is not None else max((v for _, v in values), default=0.0)
    span = WIDTH - LABEL_WIDTH - 60
    out = [
        Bar(
            label[:40],
            value,
            i * (BAR_HEIGHT + GAP),
            int(span * value / top) if top > 0 else 0,
        )
        for i, (label, value) in enumerate(values)
    ]
    return Chart(title, out, max(1, len(out)) * (BAR_HEIGHT + GAP))
