"""The dashboard snapshot's pure parts (benchmarks/dashboard_snapshot_parts/layout.py), and the
shipped dashboard read through them: placement by gridPos, variable substitution, legends."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks.dashboard_snapshot_parts import layout

DASHBOARD = (Path(__file__).resolve().parents[2] / "charts" / "skiplock" / "files"
             / "grafana-dashboard.json")


def _panel(title: str, x: int, y: int, w: int = 8, h: int = 8,
           **extra: object) -> dict[str, object]:
    return {"type": "timeseries", "title": title, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            **extra}


def test_cells_follow_grid_positions_top_down() -> None:
    top = layout.Panel("timeseries", "a", 0, 0, 12, 10)
    bottom_right = layout.Panel("timeseries", "b", 12, 10, 12, 10)
    assert layout.cell(top, 20) == (0.0, 0.5, 0.5, 0.5)
    assert layout.cell(bottom_right, 20) == (0.5, 0.0, 0.5, 0.5)
    with pytest.raises(layout.DashboardError, match="cannot hold"):
        layout.cell(bottom_right, 19)


def test_panels_sorted_by_position_and_nested_rows_included() -> None:
    dash = {"panels": [
        _panel("second", 8, 1),
        {"type": "row", "title": "collapsed", "gridPos": {"x": 0, "y": 9, "w": 24, "h": 1},
         "panels": [_panel("inside", 0, 10)]},
        _panel("first", 0, 1, targets=[{"refId": "A", "expr": "up", "legendFormat": "{{pod}}"},
                                       {"refId": "B"}]),
    ]}
    got = layout.panels(dash)
    assert [p.title for p in got] == ["first", "second", "collapsed", "inside"]
    assert got[0].targets == (layout.Target("A", "up", "{{pod}}"),)  # B has no expr
    assert layout.grid_height(got) == 18


@pytest.mark.parametrize("pos", [{"x": 20, "y": 0, "w": 8, "h": 8},
                                 {"x": 0, "y": 0, "w": 0, "h": 8},
                                 {"x": 0, "y": -1, "w": 8, "h": 8}, {"x": 0, "y": 0, "w": 8}])
def test_bad_grid_positions_are_refused_by_name(pos: dict[str, int]) -> None:
    with pytest.raises(layout.DashboardError, match="'broken'"):
        layout.panels({"panels": [{"type": "timeseries", "title": "broken", "gridPos": pos}]})


def test_overlaps_found_and_touching_cells_allowed() -> None:
    a = layout.Panel("timeseries", "a", 0, 0, 8, 8)
    touching = layout.Panel("timeseries", "b", 8, 0, 8, 8)
    below = layout.Panel("timeseries", "c", 0, 8, 8, 8)
    clash = layout.Panel("timeseries", "d", 7, 7, 2, 2)
    assert layout.overlaps([a, touching, below]) == []
    assert set(layout.overlaps([a, touching, below, clash])) == {("a", "d"), ("b", "d"),
                                                                 ("c", "d")}


def test_substitute_every_variable_syntax_and_rate_interval() -> None:
    expr = 'rate(x{ns=~"$namespace", q=~"${queue}", j=~"[[jobqueue]]"}[$__rate_interval])'
    got = layout.substitute(expr, {"namespace": ".*", "queue": "a|b", "jobqueue": "j"}, "12s")
    assert got == 'rate(x{ns=~".*", q=~"a|b", j=~"j"}[12s])'
    # a variable whose name starts like another's is not half-replaced
    assert layout.substitute("$queue_x", {"queue": "Q", "queue_x": "R"}, "1m") == "R"
    with pytest.raises(layout.DashboardError, match=r"\$nope"):
        layout.substitute('x{a="$nope"}', {}, "1m")


def test_legend_formats_like_grafana() -> None:
    labels = {"__name__": "m", "jobqueue": "jq", "direction": "up"}
    assert layout.legend("{{jobqueue}} {{ direction }}", labels) == "jq up"
    assert layout.legend("{{missing}} x", labels) == "x"
    assert layout.legend("", labels) == 'm{direction="up", jobqueue="jq"}'
    assert layout.legend("", {}) == "{}"  # sum(...) without labels, as Grafana shows it


def test_summarise_skips_nan_and_inf() -> None:
    s = layout.summarise([[1.0, math.nan, 3.0], [math.inf, -2.0], []])
    assert s == layout.Summary(series=3, points=3, low=-2.0, high=3.0)
    assert layout.summarise([]) == layout.Summary(0, 0, None, None)


def test_shipped_dashboard_lays_out_and_every_query_substitutes() -> None:
    dash = json.loads(DASHBOARD.read_text())
    items = layout.panels(dash)
    assert layout.overlaps(items) == []
    variables = layout.all_values(dash)
    assert variables == {"namespace": ".*", "jobqueue": ".*", "queue": ".*"}
    graphs = [p for p in items if p.kind != "row"]
    assert graphs and all(p.targets for p in graphs)
    for p in graphs:
        for t in p.targets:
            assert "$" not in layout.substitute(t.expr, variables, "12s"), (p.title, t.expr)
