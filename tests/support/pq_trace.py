"""Round trips read from libpq's own protocol trace (``PGconn.trace``): what a client really
sent and waited for, for tests that count them."""

from __future__ import annotations


def bursts(trace: str) -> list[list[str]]:
    """Each run of client messages the server answered, as the kinds of those messages
    (``["Parse", "Bind", ..., "Sync"]``): one round trip each. The pool's liveness ping is a
    burst of one empty simple ``Query``."""
    found: list[list[str]] = []
    sending: list[str] = []
    for line in trace.splitlines():
        parts = line.split("\t")
        # with timestamps: TIME, DIRECTION, LENGTH, KIND...; without: DIRECTION, LENGTH, KIND
        if len(parts) >= 4 and parts[1] in ("F", "B"):
            parts = parts[1:]
        if len(parts) < 3:
            continue
        kind = parts[2].split(" ", 1)[0]
        if parts[0] == "F":
            sending.append(kind)
        elif parts[0] == "B" and sending:
            found.append(sending)
            sending = []
    return found


def is_ping(burst: list[str]) -> bool:
    return burst == ["Query"]
