"""Fire times (cron.py: cronsim in a time zone, DST included, and fixed intervals), the missed
policy and jitter (schedules.plan), and what a schedule declaration refuses."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock import App, JobContext
from skiplock.cron import Cadence, CadenceError
from skiplock.schedules import (
    COUNT_CAP,
    MAX_PER_PASS,
    ScheduleError,
    make_schedule,
    plan,
    put_off,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(zone: ZoneInfo, *fields: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=zone, fold=fold)  # type: ignore[arg-type, misc]


def chain(c: Cadence, start: dt.datetime, n: int) -> list[dt.datetime]:
    out, t = [], start
    for _ in range(n):
        t = c.next_after(t)
        out.append(t)
    return out


# -- time zones and DST -------------------------------------------------------------------


def test_a_fixed_time_in_the_spring_gap_fires_once_right_after_it() -> None:
    # Berlin, 29 March 2026: 02:00 -> 03:00; 02:30 does not exist that day
    c = Cadence(cron="30 2 * * *", timezone="Europe/Berlin")
    got = chain(c, local(BERLIN, 2026, 3, 28, 12), 3)
    assert got == [local(BERLIN, 2026, 3, 29, 3, 0), local(BERLIN, 2026, 3, 30, 2, 30),
                   local(BERLIN, 2026, 3, 31, 2, 30)]


def test_a_fixed_time_in_the_autumn_overlap_fires_once() -> None:
    # Berlin, 25 October 2026: 03:00 -> 02:00; 02:30 happens twice, fires at the first
    c = Cadence(cron="30 2 * * *", timezone="Europe/Berlin")
    got = chain(c, local(BERLIN, 2026, 10, 24, 12), 2)
    # (compared in UTC: PEP 495 makes an ambiguous local time unequal to any other zone's)
    assert got[0] == local(BERLIN, 2026, 10, 25, 2, 30, fold=0).astimezone(UTC)
    assert got[0].astimezone(UTC) == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert got[1] == local(BERLIN, 2026, 10, 26, 2, 30)


def test_a_wildcard_hour_fires_in_both_occurrences_of_the_overlap() -> None:
    c = Cadence(cron="*/30 * * * *", timezone="Europe/Berlin")
    got = [t.astimezone(UTC) for t in chain(c, local(BERLIN, 2026, 10, 25, 1, 45), 5)]
    # elapsed time: every 30 minutes straight through the repeated hour
    assert got == [dt.datetime(2026, 10, 25, 0, 0, tzinfo=UTC) + i * dt.timedelta(minutes=30)
                   for i in range(5)]


def test_the_time_zone_decides_the_instant() -> None:
    start = dt.datetime(2026, 7, 1, tzinfo=UTC)
    at = {z: Cadence(cron="0 9 * * *", timezone=z).next_after(start)
          for z in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")}
    assert at["UTC"] == dt.datetime(2026, 7, 1, 9, tzinfo=UTC)
    assert at["Europe/Berlin"] == dt.datetime(2026, 7, 1, 7, tzinfo=UTC)  # CEST, +2
    assert at["America/New_York"] == dt.datetime(2026, 7, 1, 13, tzinfo=UTC)  # EDT, -4
    assert at["Asia/Kolkata"] == dt.datetime(2026, 7, 1, 3, 30, tzinfo=UTC)  # +5:30


def test_new_york_spring_forward_and_back() -> None:
    c = Cadence(cron="0 2 * * *", timezone="America/New_York")
    # 8 March 2026: 02:00 does not exist -> 03:00 EDT; 1 November: 02:00 once (EST)
    assert c.next_after(local(NEW_YORK, 2026, 3, 7, 12)).astimezone(NEW_YORK) == local(
        NEW_YORK, 2026, 3, 8, 3)
    fall = chain(c, local(NEW_YORK, 2026, 10, 31, 12), 2)
    assert [t.astimezone(UTC).hour for t in fall] == [7, 7]


def test_latest_and_count_agree_with_the_forward_chain_across_dst() -> None:
    c = Cadence(cron="*/15 * * * *", timezone="Europe/Berlin")
    start = local(BERLIN, 2026, 10, 25, 0, 0)
    forward = chain(c, start - dt.timedelta(microseconds=1), 30)
    assert c.latest(forward[0], forward[-1], 100) == forward
    assert c.latest(forward[0], forward[-1], 5) == forward[-5:]
    assert c.count(forward[0], forward[-1], 1000) == 30


def test_intervals_are_aligned_to_the_epoch() -> None:
    c = Cadence(every=10)
    t = dt.datetime(2026, 1, 1, 0, 0, 3, 500, tzinfo=UTC)
    assert c.next_after(t) == dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert c.next_after(dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)) == dt.datetime(
        2026, 1, 1, 0, 0, 20, tzinfo=UTC)
    assert c.count(t, t + dt.timedelta(seconds=100), 1000) == 10


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        Cadence(every=1).next_after(dt.datetime(2026, 1, 1))


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/Santiago", "Pacific/Chatham"]
CRONS = ["*/5 * * * *", "30 2 * * *", "0 * * * *", "15,45 1-3 * * *", "0 0 * * 0",
         "0 12 1 * *", "*/7 2 * * 1-5", "59 23 31 12 *"]
instants = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1),
                        timezones=st.just(UTC))


@settings(max_examples=50, deadline=None)
@given(cron=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), start=instants)
def test_fire_times_strictly_increase_and_latest_inverts_next(cron: str, zone: str,
                                                             start: dt.datetime) -> None:
    c = Cadence(cron=cron, timezone=zone)
    times = chain(c, start, 6)
    assert all(a < b for a, b in zip([start, *times], times, strict=False))
    # the latest fire time at or before each one is itself; nothing lies between neighbours
    for a, b in itertools.pairwise(times):
        assert c.latest(a, b, 10) == [a, b]
        assert c.latest(a, b - dt.timedelta(microseconds=1), 10) == [a]
    assert c.latest(start + dt.timedelta(microseconds=1), times[-1], 100) == times


@settings(max_examples=50, deadline=None)
@given(every=st.integers(1, 7200), start=instants)
def test_interval_fire_times_are_multiples_of_the_period(every: int, start: dt.datetime) -> None:
    c = Cadence(every=every)
    t = c.next_after(start)
    assert 0 < (t - start).total_seconds() <= every
    assert int(t.timestamp()) % every == 0 and t.microsecond == 0
    assert c.latest(start + dt.timedelta(microseconds=1), t, 5) == [t]


# -- the missed policy -----------------------------------------------------------------------

T0 = dt.datetime(2026, 5, 1, 12, tzinfo=UTC)
S = dt.timedelta(seconds=1)


@settings(max_examples=200, deadline=None)
@given(behind=st.integers(0, 400), grace=st.integers(0, 120),
       policy=st.sampled_from(["skip", "once", "backfill"]), backfill=st.integers(1, 50),
       jitter=st.sampled_from([0.0, 0.5, 30.0]), every=st.sampled_from([1, 7, 60]),
       paused=st.booleans())
def test_plan(behind: int, grace: int, policy: str, backfill: int, jitter: float, every: int,
              paused: bool) -> None:
    c = Cadence(every=every)
    now = T0 + dt.timedelta(milliseconds=250)
    next_fire_at = c.next_after(now - behind * S - dt.timedelta(microseconds=1))
    p = plan(c, next_fire_at=next_fire_at, now=now, missed=policy,  # type: ignore[arg-type]
             backfill=backfill, grace=grace, jitter=jitter, paused=paused,
             rng=random.Random(behind))
    if next_fire_at > now:
        assert p is None
        return
    assert p is not None
    due = c.latest(next_fire_at, now, 10_000)
    on_time = [t for t in due if (now - t).total_seconds() <= grace]
    missed = [t for t in due if (now - t).total_seconds() > grace]
    fired = [f.fire_at for f in p.firings]
    assert p.next_fire_at == c.next_after(now) and p.next_fire_at > now
    if paused:
        assert fired == [] and p.missed == len(due)
        return
    keep = {"skip": 0, "once": 1, "backfill": backfill}[policy]
    late = missed[len(missed) - min(keep, len(missed)):]
    assert fired == late + on_time  # ascending, each once, every on-time one
    assert [f.late for f in p.firings] == [True] * len(late) + [False] * len(on_time)
    assert p.missed == len(missed) - len(late)
    for f in p.firings:
        assert 0 <= (f.run_at - f.fire_at).total_seconds() <= jitter


def test_plan_is_not_due_before_the_fire_time() -> None:
    c = Cadence(every=60)
    assert plan(c, next_fire_at=T0 + S, now=T0, missed="once", backfill=0, grace=60,
                jitter=0, paused=False) is None


# -- declarations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "message"), [
    ({"cron": "* * * * * *"}, "5 fields"),
    ({"cron": "61 * * * *"}, "Bad minute"),
    ({"cron": "0 0 30 2 *"}, "day-of-month"),
    ({"cron": None}, "exactly one of cron"),
    ({"cron": "* * * * *", "every": 5}, "exactly one of cron"),
    ({"cron": None, "every": 0}, "every must be"),
    ({"cron": None, "every": 1.5}, "every must be"),
    ({"timezone": "Mars/Olympus"}, "not a known IANA"),
    ({"timezone": "../../etc/passwd"}, "not a known IANA"),
    ({"missed": "sometimes"}, "missed must be"),
    ({"missed": "backfill"}, "needs backfill=N"),
    ({"missed": "backfill:0"}, "needs backfill=N"),
    ({"missed": "skip", "backfill": 3}, "only for missed='backfill'"),
    ({"grace": -1}, "grace must be"),
    ({"jitter": float("nan")}, "jitter must be"),
    ({"args": {"x": object()}}, "JSON object"),
    ({"queue": "bad queue\n"}, "schedule 'n'"),
])
def test_bad_declarations_say_what_is_wrong(kw: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "n", "task": "t", "queue": "default",
                               "cron": "*/5 * * * *"}
    with pytest.raises(ScheduleError, match=message):
        make_schedule(**{**base, **kw})  # type: ignore[arg-type]


def test_cadence_error_is_a_value_error() -> None:
    with pytest.raises(CadenceError):
        Cadence(cron="x")
    assert issubclass(CadenceError, ValueError)


def test_periodic_stacks_on_a_task_or_registers_one() -> None:
    app = App(default_queue="jobs")

    @app.periodic(cron="*/5 * * * *", timezone="Europe/Berlin", args={"n": 1})
    @app.task(queue="reports")
    def report(ctx: object, n: int = 0) -> int:
        return n

    @app.periodic(every=30, name="heartbeat-fast", missed="skip")
    @app.periodic(every=3600, name="heartbeat-slow", missed="backfill:2")
    def heartbeat(ctx: object) -> None:
        return None

    assert report(None, n=3) == 3  # still callable like the function
    assert set(app.tasks) == {"report", "heartbeat"}
    assert app.schedules["report"].queue == "reports"
    assert app.schedules["report"].cadence.timezone == "Europe/Berlin"
    assert app.schedules["heartbeat-slow"].backfill == 2
    assert app.schedules["heartbeat-fast"].queue == "jobs"
    with pytest.raises(ValueError, match="declared twice"):
        app.periodic(every=5)(report)


def test_one_pass_enqueues_at_most_max_per_pass_on_time_firings() -> None:
    c = Cadence(every=1)
    p = plan(c, next_fire_at=T0 - dt.timedelta(seconds=5000), now=T0, missed="once",
             backfill=0, grace=86400, jitter=0, paused=False)
    assert p is not None and len(p.firings) == MAX_PER_PASS
    assert p.firings[-1].fire_at == T0 and p.missed == 5001 - MAX_PER_PASS


# -- review: what the database refuses, the cost of a pass, arguments that do not fit --------


@pytest.mark.parametrize(("args", "where"), [
    ({"x": "a\x00b"}, "NUL character at $.x"),
    ({"x": ["ok", "\ud800"]}, "lone surrogate U+D800 at $.x[1]"),
    ({"a\x00": 1}, "NUL character in key"),
    ({"x": {"y": "\udfff"}}, "at $.x.y"),
])
def test_args_jsonb_refuses_are_refused_at_declaration(args: dict[str, object],
                                                        where: str) -> None:
    """json.dumps takes these, jsonb does not: refused here, not by every worker's
    registration (which would restart its scheduler until the worker gave up)."""
    with pytest.raises(ScheduleError, match="PostgreSQL can store") as info:
        make_schedule(name="n", task="t", queue="default", every=5, args=args)
    assert where in str(info.value)
    app = App()

    @app.task
    def t(ctx: JobContext, **kw: object) -> None:
        return None

    with pytest.raises(ScheduleError, match="PostgreSQL can store"):
        app.periodic(every=5, args=args)(t)
    assert not app.schedules


def test_a_pass_after_a_long_outage_takes_a_bounded_number_of_cron_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-minute cron 100 days late: the pass walks about COUNT_CAP cronsim steps (it runs
    on every worker at once), not one per missed minute (144,000)."""
    import skiplock.cron as cron_module

    steps = 0
    real = CronSim

    class Counting(real):  # type: ignore[misc, valid-type]
        def __next__(self) -> dt.datetime:
            nonlocal steps
            steps += 1
            return super().__next__()  # type: ignore[no-any-return]

    monkeypatch.setattr(cron_module, "CronSim", Counting)
    c = Cadence(cron="* * * * *")
    p = plan(c, next_fire_at=T0 - dt.timedelta(days=100), now=T0, missed="once",
             backfill=0, grace=60, jitter=0, paused=False)
    # the latest missed one (11:58), the on-time ones (11:59, 12:00: a grace of 60 s)
    assert p is not None and len(p.firings) == 3
    assert p.missed >= COUNT_CAP - 1  # "at least": counted up to the cap
    assert COUNT_CAP <= 1000 and steps <= 5000


def test_periodic_args_must_fit_the_tasks_parameters() -> None:
    app = App()

    @app.task
    def report(ctx: object, day: str, pages: int = 1) -> None:
        return None

    for args, words in (({}, "missing required 'day'"), ({"day": "x", "typo": 1}, "'typo'"),
                        ({"day": 3}, "'day' must be string")):
        with pytest.raises(ScheduleError, match="do not fit") as info:
            app.periodic(every=60, args=args, name=f"r{len(app.schedules)}")(report)
        assert words in str(info.value)
    assert not app.schedules
    handle = app.periodic(every=60, args={"day": "mon"})(report)
    assert handle is report and app.schedules["report"].args == {"day": "mon"}


def test_periodic_gives_back_a_handle_for_a_plain_function_too() -> None:
    app = App()

    @app.periodic(every=60)
    def plain(ctx: object) -> int:
        return 7

    def registered(ctx: object) -> int:
        return 8

    app.task(registered)
    handle = app.periodic(every=60, name="again")(registered)
    assert type(plain).__name__ == "TaskHandle" and plain.name == "plain"
    assert type(handle).__name__ == "TaskHandle" and handle.name == "registered"
    assert plain(None) == 7 and handle(None) == 8


# -- a schedule that cannot fire is put off ---------------------------------------------------


def test_put_off_counts_the_firings_it_skips() -> None:
    """The firings in [expected, now + seconds) are skipped by the move: they count as
    missed (they used to vanish from missed_total)."""
    expected = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    now = dt.datetime(2026, 3, 1, 10, 5, 30, tzinfo=UTC)
    later = now + dt.timedelta(seconds=60)
    # every minute: 10:00 .. 10:06
    assert put_off(Cadence(every=60), expected, now, 60) == (later, 7)
    # a cron every 5 minutes, 20 minutes late: 10:00, 10:05, 10:10, 10:15, 10:20
    late = dt.datetime(2026, 3, 1, 10, 20, tzinfo=UTC)
    assert put_off(Cadence(cron="*/5 * * * *"), expected, late, 60) == (
        late + dt.timedelta(seconds=60), 5)
    # a firing exactly at the new time is not skipped: the next pass fires it
    assert put_off(Cadence(every=60), expected, dt.datetime(2026, 3, 1, 10, 5, tzinfo=UTC),
                   60)[1] == 6
    # nothing can count for a cadence that cannot be read, or without a fire time yet
    assert put_off(None, expected, now, 60) == (later, 0)
    assert put_off(Cadence(every=60), None, now, 60) == (later, 0)


def test_put_off_and_the_next_plan_account_for_every_firing() -> None:
    """What the put-off skips plus what the next pass's plan sees (fired or missed) is every
    firing from the old fire time to that pass: none lost, none counted twice."""
    c = Cadence(every=60)
    expected = dt.datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
    now = dt.datetime(2026, 3, 1, 10, 3, tzinfo=UTC)
    later, skipped = put_off(c, expected, now, 60)
    then = later + dt.timedelta(seconds=150)
    decided = plan(c, next_fire_at=later, now=then, missed="skip", backfill=0, grace=0,
                   jitter=0, paused=False)
    assert decided is not None
    assert skipped + len(decided.firings) + decided.missed == c.count(expected, then, 10_000)
