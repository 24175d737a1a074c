"""docs/failure-modes.md cannot drift: it names every failure of the user's spec with the spec's
own mitigation and test text, every test it names exists, and every failure-suite test is named."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "failure-modes.md"
SUITE = ROOT / "tests" / "integration" / "failures"


# The user's spec, copied verbatim into the repository (docs/spec/) so a clean clone checks
# against it; SKIPLOCK_SPEC points at another copy (e.g. the user's newer one) to compare.
SPEC = ROOT / "docs" / "spec" / "failure-modes.md"


def _spec_path() -> Path:
    path = Path(os.environ.get("SKIPLOCK_SPEC") or SPEC)
    if not path.exists():
        pytest.fail(f"the user's failure-mode spec is missing at {path}")
    return path


def parse_spec(text: str) -> list[dict[str, str]]:
    """Each ``- **Failure**`` item with its *Mitigation:* and *Test:* lines."""
    items: list[dict[str, str]] = []
    for line in text.splitlines():
        head = re.match(r"^- \*\*(.+?)\*\*\s*$", line)
        if head:
            items.append({"failure": head.group(1)})
            continue
        part = re.match(r"^\s+- \*(Mitigation|Test):\*\s*(.+?)\s*$", line)
        if part and items:
            items[-1][part.group(1).lower()] = part.group(2)
    return items


def parse_matrix(text: str) -> list[tuple[str, str, str, str]]:
    """Rows of the matrix table: (failure, mitigation, test id, asserts)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("`tests/"):
            rows.append((cells[0], cells[1], cells[2].strip("`"), cells[3]))
    return rows


def suite_tests() -> set[str]:
    found = set()
    for path in sorted(SUITE.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_spec_has_the_twelve_failure_modes() -> None:
    spec = parse_spec(_spec_path().read_text())
    assert len(spec) == 12, [s["failure"] for s in spec]
    assert all("mitigation" in s and "test" in s for s in spec), spec


def test_every_spec_failure_is_in_the_matrix_with_the_spec_text() -> None:
    spec = parse_spec(_spec_path().read_text())
    doc = DOC.read_text()
    rows = parse_matrix(doc)
    in_matrix = [r[0] for r in rows]
    assert list(dict.fromkeys(in_matrix)) == [s["failure"] for s in spec], \
        "matrix failures differ from the spec (names and order)"
    found = sections(doc)
    for s in spec:
        body = found.get(s["failure"])
        assert body is not None, f"no section for {s['failure']!r}"
        assert f"- Spec mitigation: {s['mitigation']}" in body, s["failure"]
        assert f"- Spec test: {s['test']}" in body, s["failure"]
        first = next(r for r in rows if r[0] == s["failure"])
        assert first[1] and first[1] != "(as above)", f"{s['failure']}: no mitigation"


def test_every_named_test_exists_and_every_suite_test_is_named() -> None:
    rows = parse_matrix(DOC.read_text())
    named = {r[2] for r in rows}
    existing = suite_tests()
    assert existing, "no tests found in the failure suite"
    assert named - existing == set(), f"named in the doc but missing: {sorted(named - existing)}"
    assert existing - named == set(), f"tests not in the doc's matrix: {sorted(existing - named)}"
    for failure, _, test, asserts in rows:
        assert len(asserts) > 40, f"{test}: say what it asserts ({failure})"


def test_parsers_reject_drift() -> None:
    """The checks can fail: a renamed failure or a missing test is noticed."""
    spec = [{"failure": "A", "mitigation": "m", "test": "t"}]
    doc = "| A | m | `tests/x.py::test_y` | asserts something long enough to count here ok |\n"
    assert [r[0] for r in parse_matrix(doc)] == ["A"]
    assert [r[0] for r in parse_matrix(doc.replace("| A |", "| B |"))] != [spec[0]["failure"]]
    assert parse_spec("- **X**\n  - *Mitigation:* m\n  - *Test:* t\n") == [
        {"failure": "X", "mitigation": "m", "test": "t"}]
