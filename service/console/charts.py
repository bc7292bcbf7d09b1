"""The overview's chart, drawn on the server as SVG shapes (no script, no chart library).

Pure: per-minute counts of the events received (by the state they are in now) in, bars and labels out;
the template turns them into SVG elements.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["OUTCOME_COLOURS", "Bar", "Chart", "deliveries_chart"]

# States, bottom to top in a bar.
OUTCOME_COLOURS = {
    "succeeded": "#2f7d32",
    "ignored": "#b0b7bf",
    "queued": "#1f5fbf",
    "processing": "#7fb0ff",
    "retrying": "#f9a825",
    "dead_lettered": "#c62828",
}

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 200, 40, 24, 10


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    y_labels: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]
    total: int
    legend: list[tuple[str, str, int]]


def deliveries_chart(per_minute: list[dict[str, Any]]) -> Chart:
    counts = [{k: int(v) for k, v in m.items() if k in OUTCOME_COLOURS} for m in per_minute]
    peak = max([sum(c.values()) for c in counts] + [1])
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(counts), 1)
    bars: list[Bar] = []
    totals = dict.fromkeys(OUTCOME_COLOURS, 0)
    for i, (minute, c) in enumerate(zip(per_minute, counts, strict=True)):
        y = float(TOP + plot_h)
        label = time.strftime("%H:%M", time.gmtime(int(minute["minute"])))
        for outcome, colour in OUTCOME_COLOURS.items():
            n = c.get(outcome, 0)
            totals[outcome] += n
            if not n:
                continue
            h = n / peak * plot_h
            y -= h
            bars.append(Bar(LEFT + i * slot + 1, y, max(slot - 2, 1), h, colour, f"{label} UTC: {n} {outcome}"))
    ticks = sorted({0, peak // 2, peak})
    y_labels = [(TOP + plot_h - t / peak * plot_h, str(t)) for t in ticks]
    x_labels = [(LEFT + i * slot, time.strftime("%H:%M", time.gmtime(int(per_minute[i]["minute"]))))
                for i in range(0, len(per_minute), 10)]
    legend = [(name, colour, totals[name]) for name, colour in OUTCOME_COLOURS.items()]
    return Chart(WIDTH, HEIGHT, bars, y_labels, x_labels, sum(totals.values()), legend)
