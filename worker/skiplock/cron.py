"""When a schedule fires: a cron expression in a time zone (by cronsim), or a fixed interval.

Pure functions of their arguments; every time in and out is an aware datetime, compared as
instants. The caller passes the database's now(), never this process's clock, so that every
worker computes the same fire times.

Why cronsim (not croniter): it is written to match Debian's cron, DST quirks included, and is
tested against it (Healthchecks runs it for every check it monitors), and it works with the
standard zoneinfo. Its DST rules, which the unit tests pin:

- spring forward (a local time that does not exist, e.g. 02:30 in Europe/Berlin on the last
  Sunday of March): a job at a fixed hour in the gap fires once, right after the gap (03:00);
- fall back (a local time that exists twice): a job at a fixed hour fires once, at the first
  occurrence; a job whose hour field is ``*`` (every 30 minutes, say) fires in both
  occurrences, as it would by elapsed time.

croniter also handles zones, but its DST behaviour has changed between releases and its issue
tracker holds a long tail of DST reports. cronsim has no seconds field: sub-minute cadences
are ``every`` (seconds, aligned to the Unix epoch, so independent of any time zone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TICK = dt.timedelta(microseconds=1)
# Cron expressions that match rarely (29 February on a Monday) still step by at most a few
# hundred years; this bounds the search for something that matches nothing in practice.
_HORIZON = dt.timedelta(days=366 * 30)


class CadenceError(ValueError):
    """A cron expression, interval or time zone that cannot be used; says which and why."""


@dataclass(frozen=True)
class Cadence:
    """A cron expression in ``timezone``, or ``every`` seconds; exactly one of the two."""

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        problem = cadence_problem(self.cron, self.every, self.timezone)
        if problem:
            raise CadenceError(problem)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every}s"
        return f"{self.cron} ({self.timezone})"

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first fire time strictly after ``t`` (in UTC)."""
        _aware(t)
        if self.every is not None:
            steps = (t - EPOCH) // dt.timedelta(seconds=self.every) + 1
            return EPOCH + steps * dt.timedelta(seconds=self.every)
        assert self.cron is not None
        found = next(CronSim(self.cron, t.astimezone(self.zone)))
        return found.astimezone(dt.UTC)

    def latest(self, since: dt.datetime, until: dt.datetime, limit: int) -> list[dt.datetime]:
        """Up to ``limit`` of the fire times in [since, until], the latest ones, ascending."""
        _aware(since)
        _aware(until)
        if limit <= 0 or until < since:
            return []
        found: list[dt.datetime] = []
        if self.every is not None:
            period = dt.timedelta(seconds=self.every)
            last = EPOCH + ((until - EPOCH) // period) * period
            while last >= since and len(found) < limit:
                found.append(last)
                last -= period
        else:
            assert self.cron is not None
            # reverse=True yields times strictly before its start: start a tick after `until`
            # so that a fire time at `until` itself counts.
            back = CronSim(self.cron, (until + _TICK).astimezone(self.zone), reverse=True)
            for local in back:
                t = local.astimezone(dt.UTC)
                if t < since or len(found) >= limit:
                    break
                found.append(t)
        found.reverse()
        return found

    def count(self, since: dt.datetime, until: dt.datetime, cap: int) -> int:
        """How many fire times lie in [since, until]: exactly for an interval (arithmetic,
        no steps), at most ``cap`` for a cron expression (cap steps of cronsim)."""
        if until < since:
            return 0
        if self.every is not None:
            period = dt.timedelta(seconds=self.every)
            first = self.next_after(since - _TICK)
            return 0 if first > until else (until - first) // period + 1
        return len(self.latest(since, until, cap))


def cadence_problem(cron: str | None, every: int | None, timezone: str) -> str | None:
    """Why this cadence cannot be used, or None (pure)."""
    if (cron is None) == (every is None):
        return "give exactly one of cron (an expression) and every (seconds)"
    if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
        return f"timezone must be an IANA name such as Europe/Berlin, got {timezone!r}"
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {timezone!r} is not a known IANA time zone (e.g. Europe/Berlin, UTC)"
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= 31_536_000:
            return f"every must be a whole number of seconds from 1 to 31536000, got {every!r}"
        return None
    if not isinstance(cron, str) or not cron.strip() or len(cron) > 256:
        return f"cron must be a cron expression such as '*/5 * * * *', got {cron!r}"
    if len(cron.split()) != 5:
        return (f"cron {cron!r}: expected 5 fields (minute hour day-of-month month "
                "day-of-week); for seconds use every=")
    try:
        first = next(CronSim(cron, dt.datetime(2000, 1, 1, tzinfo=zone)))
    except CronSimError as exc:
        return f"cron {cron!r}: {exc}"
    except StopIteration:
        return f"cron {cron!r} never fires"
    if first - dt.datetime(2000, 1, 1, tzinfo=zone) > _HORIZON:
        return f"cron {cron!r} does not fire within 30 years"
    return None


def _aware(t: dt.datetime) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{t!r} has no time zone: fire times are instants")
