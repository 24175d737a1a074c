"""Inline SVG charts, rendered on the server: no chart library, nothing fetched by the browser.

Pure functions from numbers to markup; every label is escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

W, H = 360, 120
PAD_L, PAD_R, PAD_T, PAD_B = 34, 6, 8, 18


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[float]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _frame(title: str, top: float, start: dt.datetime | None, end: dt.datetime | None,
           legend: Sequence[Series]) -> list[str]:
    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#999"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#999"/>',
        f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end" font-size="9">{_fmt(top)}</text>',
        f'<text x="{PAD_L - 4}" y="{H - PAD_B}" text-anchor="end" font-size="9">0</text>',
    ]
    if start is not None and end is not None:
        parts.append(f'<text x="{PAD_L}" y="{H - 4}" font-size="9">{start:%H:%M}</text>')
        parts.append(f'<text x="{W - PAD_R}" y="{H - 4}" font-size="9" text-anchor="end">'
                     f"{end:%H:%M} UTC</text>")
    x = PAD_L + 60
    for s in legend:
        parts.append(f'<rect x="{x}" y="{H - 12}" width="8" height="8" fill="{s.colour}"/>')
        parts.append(f'<text x="{x + 11}" y="{H - 4}" font-size="9">{escape(s.name)}</text>')
        x += 14 + 6 * len(s.name)
    return parts


def stacked_bars(title: str, times: Sequence[dt.datetime], series: Sequence[Series]) -> Markup:
    """One bar per time bucket, the series stacked (e.g. succeeded and dead per minute)."""
    n = len(times)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    top = max([*totals, 1.0])
    parts = _frame(title, top, times[0] if times else None, times[-1] if times else None, series)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = plot_w / max(n, 1)
    # What every bar of a bucket, or of a series, shares is formatted once per chart: a page
    # draws 50 of these.
    width = f"{max(bw - 1, 0.5):.1f}"
    starts = [f'<rect x="{PAD_L + i * bw + 0.5:.1f}" y="' for i in range(n)]
    labels = [f"{t:%H:%M}" for t in times]
    fills = [(f'" fill="{s.colour}"><title>', f" {escape(s.name)}: ") for s in series]
    for i in range(n):
        y = float(H - PAD_B)
        for s, (fill, name) in zip(series, fills, strict=True):
            v = s.values[i]
            if v <= 0:
                continue
            h = v / top * plot_h
            y -= h
            parts.append(f'{starts[i]}{y:.1f}" width="{width}" height="{h:.1f}{fill}'
                         f"{labels[i]}{name}{_fmt(v)}</title></rect>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from escaped parts above


def lines(title: str, times: Sequence[dt.datetime], series: Sequence[Series]) -> Markup:
    """Lines over time (e.g. backlog, in-flight and stuck as sampled); each series has one
    value per time (a ValueError otherwise)."""
    n = len(times)
    top = max([v for s in series for v in s.values] + [1.0])
    parts = _frame(title, top, times[0] if times else None, times[-1] if times else None, series)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    if n == 0:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="10" '
                     'fill="#777">no samples yet</text>')
    span = (times[-1] - times[0]).total_seconds() if n > 1 else 0.0
    # The x of each point once for all the series: they share their times.
    xs = [f"{PAD_L + ((t - times[0]).total_seconds() / span if span else 1.0) * plot_w:.1f},"
          for t in times]
    for s in series:
        pts = [f"{x}{H - PAD_B - v / top * plot_h:.1f}" for x, v in zip(xs, s.values, strict=True)]
        if len(pts) == 1:
            x, y = pts[0].split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{s.colour}"/>')
        elif pts:
            parts.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="1.5" '
                         f'points="{" ".join(pts)}"><title>{escape(s.name)}: latest '
                         f"{_fmt(s.values[-1])}</title></polyline>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from escaped parts above


def attempt_timeline(created: dt.datetime, marks: Sequence[tuple[dt.datetime, str, str]],
                     end: dt.datetime) -> Markup:
    """A job's life on one axis: created, each failed attempt, and where it is now."""
    total = max((end - created).total_seconds(), 1e-3)
    parts = [f'<svg class="chart timeline" viewBox="0 0 {W} 44" width="{W}" height="44" '
             'role="img" aria-label="attempt timeline" xmlns="http://www.w3.org/2000/svg">',
             "<title>attempt timeline</title>",
             f'<line x1="10" y1="20" x2="{W - 10}" y2="20" stroke="#999"/>',
             '<circle cx="10" cy="20" r="4" fill="#4a78c2"><title>created</title></circle>',
             '<text x="10" y="40" font-size="9">created</text>']
    labelled_at = -100.0
    for at, label, colour in marks:
        x = 10 + (at - created).total_seconds() / total * (W - 20)
        parts.append(f'<circle cx="{x:.1f}" cy="20" r="4" fill="{colour}">'
                     f"<title>{escape(label)} at {at:%H:%M:%S}</title></circle>")
        if x - labelled_at >= 40:  # close marks keep only their tooltip, so labels never overlap
            parts.append(f'<text x="{x:.1f}" y="10" font-size="9" text-anchor="middle">'
                         f"{escape(label)}</text>")
            labelled_at = x
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from escaped parts above
