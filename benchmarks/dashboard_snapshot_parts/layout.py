"""The pure parts of the dashboard snapshot: read panels and rows out of a Grafana dashboard
JSON, substitute its template variables into PromQL, format legends as Grafana does, place
panels by ``gridPos`` on the 24-column grid, and summarise the series a query returned.

No I/O here: the script (benchmarks/dashboard_snapshot.py) talks to Prometheus and draws."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GRID_COLUMNS = 24  # Grafana's grid is 24 columns wide; heights are in rows of 30 px

# Grafana's variable syntaxes: $name, ${name} (also ${name:format}) and the deprecated [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class DashboardError(ValueError):
    """The dashboard JSON is not what the snapshot can draw (a clear message says where)."""


@dataclass(frozen=True)
class Target:
    ref: str
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    kind: str  # "row" or a panel type ("timeseries", ...)
    title: str
    x: int
    y: int
    w: int
    h: int
    unit: str = "short"
    targets: tuple[Target, ...] = ()


def panels(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Every panel and row, top-level or nested in a collapsed row, sorted by position."""
    raw = dashboard.get("panels")
    if not isinstance(raw, list):
        raise DashboardError("dashboard has no 'panels' list")
    out: list[Panel] = []
    for p in raw:
        out.append(_panel(p))
        out.extend(_panel(inner) for inner in p.get("panels", []) if isinstance(p, dict))
    return sorted(out, key=lambda p: (p.y, p.x))


def _panel(p: Any) -> Panel:
    if not isinstance(p, dict):
        raise DashboardError(f"a panel must be an object, got {type(p).__name__}")
    title = str(p.get("title", ""))
    pos = p.get("gridPos")
    if not isinstance(pos, dict):
        raise DashboardError(f"panel {title!r} has no gridPos")
    try:
        x, y, w, h = (int(pos[k]) for k in ("x", "y", "w", "h"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DashboardError(f"panel {title!r}: gridPos needs integer x, y, w, h: {pos}") from exc
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
        raise DashboardError(f"panel {title!r}: gridPos {pos} is outside the "
                             f"{GRID_COLUMNS}-column grid")
    targets = tuple(
        Target(str(t.get("refId", "")), str(t["expr"]), str(t.get("legendFormat", "")))
        for t in p.get("targets", []) if isinstance(t, dict) and t.get("expr")
    )
    unit = str(p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))
    return Panel(str(p.get("type", "")), title, x, y, w, h, unit, targets)


def overlaps(items: Sequence[Panel]) -> list[tuple[str, str]]:
    """Pairs of panels whose grid cells intersect (a broken layout)."""
    bad = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h:
                bad.append((a.title, b.title))
    return bad


def grid_height(items: Iterable[Panel]) -> int:
    return max((p.y + p.h for p in items), default=0)


def cell(panel: Panel, height: int) -> tuple[float, float, float, float]:
    """The panel's cell as matplotlib figure fractions (left, bottom, width, height) for a
    grid ``height`` rows tall, y growing downwards as in Grafana."""
    if height < panel.y + panel.h:
        raise DashboardError(f"grid of {height} rows cannot hold panel {panel.title!r}")
    return (panel.x / GRID_COLUMNS, 1 - (panel.y + panel.h) / height,
            panel.w / GRID_COLUMNS, panel.h / height)


def substitute(expr: str, variables: Mapping[str, str], rate_interval: str) -> str:
    """``expr`` with ``$__rate_interval`` and every template variable replaced. An unknown
    variable is an error, not left in place (Prometheus would reject or misread it)."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name == "__rate_interval":
            return rate_interval
        if name not in variables:
            raise DashboardError(f"unknown variable ${name} in {expr!r}")
        return variables[name]
    return _VARIABLE.sub(repl, expr)


def all_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each query variable at "All": its allValue (a regex for ``=~``), ``.*`` by default;
    the datasource variable is not used inside PromQL and is left out."""
    out = {}
    for v in dashboard.get("templating", {}).get("list", []):
        if isinstance(v, dict) and v.get("type") != "datasource" and v.get("name"):
            out[str(v["name"])] = str(v.get("allValue") or ".*")
    return out


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` becomes the label's value (empty when the series
    lacks it); an empty format shows the series' label set like ``{a="1", b="2"}``."""
    if not fmt.strip():
        name = labels.get("__name__", "")
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{inner}}}" if inner or not name else name
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()


@dataclass(frozen=True)
class Summary:
    series: int
    points: int
    low: float | None
    high: float | None


def summarise(series: Iterable[Sequence[float]]) -> Summary:
    """Series count, points and min/max over the finite values (NaN from histogram_quantile
    over an empty window and +/-Inf are not values to plot)."""
    n = points = 0
    low = high = None
    for values in series:
        n += 1
        for v in values:
            if math.isfinite(v):
                points += 1
                low = v if low is None or v < low else low
                high = v if high is None or v > high else high
    return Summary(n, points, low, high)
