"""Trend charts of laboratory results as server-rendered, accessible SVG (no script, no library).

``trend_chart`` places the points of one analyte in one unit on a fixed canvas (``WIDTH`` by
``HEIGHT``, plot area ``LEFT``..``RIGHT`` by ``TOP``..``BOTTOM``): time runs left to right, values
bottom to top on "nice" ticks (steps of 1, 2, 2.5 or 5 times 10ⁿ) that enclose every value and every
reference limit. The reference range is a band: one rectangle while the range stays the same,
and one per stretch of points that share a range when it varies (each point's stretch reaches
half-way to its neighbours). A point outside its own range is drawn as a diamond rather than a
circle, so it does not depend on colour. ``render_svg`` writes the SVG with a ``<title>`` and a
``<desc>``; the page puts a data table next to it for screen readers. Coordinates are rounded
to two decimals, so tests can check them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 300
LEFT = 64.0
RIGHT = 616.0
TOP = 16.0
BOTTOM = 252.0
INSET = 16.0
"""Distance of the first and last points from the plot's left and right edges."""
MAX_DATE_TICKS = 5
RADIUS = 5.0
DIAMOND = 7.0
BAND_FILL = "#cfe8d6"
LINE = "#1f4e79"
OUT = "#b00020"
AXIS = "#555555"


@dataclass(frozen=True, slots=True)
class Point:
    """One result to chart: its time, its value and the reference range given with it."""

    when: datetime
    value: float
    low: float | None = None
    high: float | None = None
    label: str = ""
    """What the point's tooltip says (date, value and unit, as the page formats them)."""

    @property
    def out_of_range(self) -> bool:
        return (self.low is not None and self.value < self.low) or (
            self.high is not None and self.value > self.high
        )


@dataclass(frozen=True, slots=True)
class Placed:
    point: Point
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Band:
    """A stretch of the reference range: x from ``x0`` to ``x1``, y from ``y0`` (top) to ``y1``."""

    x0: float
    x1: float
    y0: float
    y1: float
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Chart:
    points: list[Placed]
    bands: list[Band]
    value_ticks: list[tuple[float, float]]
    """``(y, value)`` of each horizontal grid line."""
    date_ticks: list[tuple[float, datetime]]
    """``(x, time)`` of each date on the time axis."""
    minimum: float
    maximum: float
    """The value axis runs from ``minimum`` (at ``BOTTOM``) to ``maximum`` (at ``TOP``)."""

    @property
    def out_of_range(self) -> int:
        return sum(1 for p in self.points if p.point.out_of_range)


def _round(value: float) -> float:
    return round(value, 2)


def nice_step(span: float) -> float:
    """A step of 1, 2, 2.5 or 5 times 10ⁿ giving about four intervals over ``span`` (> 0)."""
    raw = span / 4
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    for nice in (1.0, 2.0, 2.5, 5.0):
        if fraction <= nice + 1e-9:
            return nice * 10**exponent
    return 10.0 ** (exponent + 1)


def value_axis(values: Sequence[float]) -> tuple[float, float, float]:
    """``(minimum, maximum, step)`` of the value axis: multiples of a nice step enclosing ``values``."""
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.2 or 1.0
        lo, hi = lo - span / 2, hi + span / 2
    step = nice_step(span)
    minimum = math.floor(lo / step + 1e-9) * step
    maximum = math.ceil(hi / step - 1e-9) * step
    if maximum <= minimum:
        maximum = minimum + step
    return round(minimum, 10), round(maximum, 10), step


def trend_chart(points: Sequence[Point]) -> Chart:
    """The geometry of the chart of ``points`` (at least one), in time order."""
    if not points:
        raise ValueError("a chart needs at least one point")
    ordered = sorted(points, key=lambda p: p.when)
    limits = [v for p in ordered for v in (p.low, p.high) if v is not None]
    minimum, maximum, step = value_axis([p.value for p in ordered] + limits)

    def y_of(value: float) -> float:
        return _round(BOTTOM - (value - minimum) / (maximum - minimum) * (BOTTOM - TOP))

    first, last = ordered[0].when, ordered[-1].when
    seconds = (last - first).total_seconds()

    def x_of(when: datetime) -> float:
        if seconds <= 0:
            return _round((LEFT + RIGHT) / 2)
        share = (when - first).total_seconds() / seconds
        return _round(LEFT + INSET + share * (RIGHT - LEFT - 2 * INSET))

    placed = [Placed(p, x_of(p.when), y_of(p.value)) for p in ordered]
    ticks = []
    count = round((maximum - minimum) / step)
    for i in range(count + 1):
        value = round(minimum + i * step, 10)
        ticks.append((y_of(value), value))
    return Chart(placed, _bands(placed, y_of), ticks, _date_ticks(ordered, x_of), minimum, maximum)


def _bands(placed: list[Placed], y_of: Callable[[float], float]) -> list[Band]:
    """The reference range per stretch of points sharing it (merged while it does not change)."""
    bands: list[Band] = []
    for i, p in enumerate(placed):
        x0 = LEFT if i == 0 else _round((placed[i - 1].x + p.x) / 2)
        x1 = RIGHT if i == len(placed) - 1 else _round((p.x + placed[i + 1].x) / 2)
        low, high = p.point.low, p.point.high
        if low is None and high is None:
            continue
        if bands and bands[-1].x1 == x0 and (bands[-1].low, bands[-1].high) == (low, high):
            previous = bands.pop()
            x0 = previous.x0
        top = y_of(high) if high is not None else TOP
        bottom = y_of(low) if low is not None else BOTTOM
        bands.append(Band(x0, x1, top, bottom, low, high))
    return [b for b in bands if b.x1 > b.x0]


def _date_ticks(ordered: list[Point], x_of: Callable[[datetime], float]) -> list[tuple[float, datetime]]:
    first, last = ordered[0].when, ordered[-1].when
    distinct = len({p.when.date() for p in ordered})
    if first == last or distinct == 1:
        return [(x_of(first), first)]
    n = min(MAX_DATE_TICKS, distinct)
    return [
        (x_of(first + (last - first) * i / (n - 1)), first + (last - first) * i / (n - 1)) for i in range(n)
    ]


def _f(value: float) -> str:
    text = f"{_round(value):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def render_svg(
    chart: Chart,
    *,
    ident: str,
    title: str,
    description: str,
    number: Callable[[float], str],
    date: Callable[[datetime], str],
    unit: str = "",
) -> Markup:
    """The chart as inline SVG (``role="img"``, named by its ``<title>`` and ``<desc>``)."""
    e = escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="{e(ident)}-title {e(ident)}-desc">',
        f'<title id="{e(ident)}-title">{e(title)}</title>',
        f'<desc id="{e(ident)}-desc">{e(description)}</desc>',
    ]
    for b in chart.bands:
        out.append(
            f'<rect class="band" x="{_f(b.x0)}" y="{_f(b.y0)}" width="{_f(b.x1 - b.x0)}" '
            f'height="{_f(b.y1 - b.y0)}" fill="{BAND_FILL}"/>'
        )
    for y, value in chart.value_ticks:
        out.append(
            f'<line class="grid" x1="{_f(LEFT)}" y1="{_f(y)}" x2="{_f(RIGHT)}" y2="{_f(y)}" '
            f'stroke="#dddddd" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_f(LEFT - 6)}" y="{_f(y + 4)}" text-anchor="end" font-size="12" '
            f'fill="#222222">{e(number(value))}</text>'
        )
    if unit:
        out.append(
            f'<text class="unit" x="{_f(LEFT)}" y="{_f(TOP - 4)}" font-size="12" '
            f'fill="#222222">{e(unit)}</text>'
        )
    out.append(
        f'<path class="axis" d="M{_f(LEFT)} {_f(TOP)} V{_f(BOTTOM)} H{_f(RIGHT)}" fill="none" '
        f'stroke="{AXIS}" stroke-width="1.5"/>'
    )
    for x, when in chart.date_ticks:
        out.append(
            f'<line x1="{_f(x)}" y1="{_f(BOTTOM)}" x2="{_f(x)}" y2="{_f(BOTTOM + 5)}" stroke="{AXIS}"/>'
        )
        out.append(
            f'<text x="{_f(x)}" y="{_f(BOTTOM + 20)}" text-anchor="middle" font-size="12" '
            f'fill="#222222">{e(date(when))}</text>'
        )
    if len(chart.points) > 1:
        coords = " ".join(f"{_f(p.x)},{_f(p.y)}" for p in chart.points)
        out.append(f'<polyline class="line" points="{coords}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    for p in chart.points:
        tip = f"<title>{e(p.point.label)}</title>" if p.point.label else ""
        if p.point.out_of_range:
            d = (
                f"M{_f(p.x)} {_f(p.y - DIAMOND)} L{_f(p.x + DIAMOND)} {_f(p.y)} "
                f"L{_f(p.x)} {_f(p.y + DIAMOND)} L{_f(p.x - DIAMOND)} {_f(p.y)} Z"
            )
            out.append(
                f'<path class="point out" data-x="{_f(p.x)}" data-y="{_f(p.y)}" d="{d}" fill="{OUT}" '
                f'stroke="#ffffff" stroke-width="1">{tip}</path>'
            )
        else:
            out.append(
                f'<circle class="point" cx="{_f(p.x)}" cy="{_f(p.y)}" r="{_f(RADIUS)}" fill="{LINE}" '
                f'stroke="#ffffff" stroke-width="1">{tip}</circle>'
            )
    out.append("</svg>")
    return Markup("".join(out))
