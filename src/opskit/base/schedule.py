"""Cron expressions: validated and walked the way cron itself runs them, time zones included.

Validation follows healthchecks: build it with croniter and ask for next().

Run times are computed in *local wall-clock time* of the schedule's zone and only then
mapped to UTC instants, with the rules of Debian's cron (cron(8), "Special considerations
... daylight savings time"):

- a fixed-time job (neither the minute nor the hour field starts with `*`) whose time falls
  into the hour skipped in spring runs right after the change; in the repeated hour of
  autumn it runs once, at the first occurrence;
- a wildcard job (minute or hour starts with `*`) simply follows the wall clock: nothing
  runs in the skipped hour, and the repeated hour runs again.

croniter's own tz-aware iteration gets the first rule right but not the second, and the
difference decides whether cron-check reports a false "missed" twice a year.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

UTC = dt.timezone.utc
# Every real DST shift is at most 2 hours; walking this far past a boundary in local time
# sees every naive time that can map onto the instants we ask about.
_SLACK = dt.timedelta(hours=3)
_MAX_STEPS = 5000

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def validate_cron(expr: str) -> str | None:
    """None if expr is a usable five-field cron schedule, else what is wrong with it."""
    fields = expr.split()
    if len(fields) != 5:
        return f"expected 5 fields, got {len(fields)}"
    from croniter import croniter  # start-up: croniter only where a schedule is read

    try:
        it = croniter(expr, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        it.get_next(dt.datetime)
    except Exception as e:  # croniter raises several unrelated types for bad input
        return str(e) or type(e).__name__
    return None


def expand_macro(expr: str) -> str:
    """`@daily` → `0 0 * * *`; five-field expressions come back unchanged."""
    return MACROS.get(expr.strip().lower(), expr)


def is_wildcard(expr: str) -> bool:
    """Cron's MIN_STAR/HR_STAR: such jobs follow the wall clock across DST changes."""
    fields = expand_macro(expr).split()
    return len(fields) == 5 and (fields[0].startswith("*") or fields[1].startswith("*"))


def local_zone() -> dt.tzinfo:
    """The zone the cron daemon uses: $TZ, else /etc/localtime, else UTC.

    A fixed offset (datetime.now().astimezone()) would be wrong half the year, so this
    returns a real IANA zone whenever one can be found.
    """
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            return zoneinfo.ZoneInfo(target.split("zoneinfo/", 1)[1])
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        return UTC


def zone(name: str | None) -> dt.tzinfo:
    """The named IANA zone, or the local zone for None."""
    return zoneinfo.ZoneInfo(name) if name else local_zone()


def _naive(when: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return when.astimezone(tz).replace(tzinfo=None)


def _gap_end(before: dt.datetime, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """First UTC instant (whole second) in (before, after] whose offset is the post-change one."""
    target = after.astimezone(tz).utcoffset()
    lo, hi = before, after
    while (hi - lo).total_seconds() > 1:
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def instants(naive: dt.datetime, tz: dt.tzinfo, wildcard: bool) -> list[dt.datetime]:
    """The UTC instants at which cron runs a job scheduled at local wall time `naive`."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if _naive(first, tz) == naive:  # the time exists twice (autumn)
        return [first, second] if wildcard else [first]
    # The time does not exist (spring). fold=1 applies the new offset, so it is the earlier.
    if wildcard:
        return []
    return [_gap_end(min(first, second), max(first, second), tz)]


def _walk(expr: str, start: dt.datetime, forward: bool) -> Iterator[dt.datetime]:
    from croniter import croniter  # start-up: croniter only where a schedule is read

    it = croniter(expand_macro(expr), start)
    for _ in range(_MAX_STEPS):
        yield it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)


def _steady(tz: dt.tzinfo, a: dt.datetime, b: dt.datetime) -> bool:
    """No offset change near [a, b] (b within a day of a): local time is a plain shift there."""
    if abs((b - a).total_seconds()) > 86400:
        return False
    lo, hi = min(a, b) - _SLACK, max(a, b) + _SLACK
    return lo.astimezone(tz).utcoffset() == hi.astimezone(tz).utcoffset()


def _plain(expr: str, start: dt.datetime, tz: dt.tzinfo, forward: bool) -> dt.datetime:
    naive = next(_walk(expr, _naive(start, tz), forward))
    return naive.replace(tzinfo=tz).astimezone(UTC)


def next_run(expr: str, after: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The first UTC instant strictly after `after` at which cron runs `expr` in zone `tz`."""
    tz = tz or local_zone()
    fast = _plain(expr, after, tz, forward=True)
    if _steady(tz, after, fast):
        return fast
    wildcard = is_wildcard(expr)
    best: dt.datetime | None = None
    for naive in _walk(expr, _naive(after, tz) - _SLACK, forward=True):
        # Past this point every naive time maps to an instant later than `best`.
        if best is not None and naive > _naive(best, tz) + _SLACK:
            return best
        for when in instants(naive, tz, wildcard):
            if when > after and (best is None or when < best):
                best = when
    raise ValueError(f"{expr!r} has no run after {after.isoformat()}")


def prev_run(expr: str, at: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The last UTC instant at or before `at` at which cron runs `expr` in zone `tz`."""
    tz = tz or local_zone()
    # croniter's get_prev is strictly before its start: start one second later so `at` counts.
    fast = _plain(expr, at + dt.timedelta(seconds=1), tz, forward=False)
    if fast <= at and _steady(tz, fast, at):
        return fast
    wildcard = is_wildcard(expr)
    best: dt.datetime | None = None
    for naive in _walk(expr, _naive(at, tz) + _SLACK + dt.timedelta(minutes=1), forward=False):
        if best is not None and naive < _naive(best, tz) - _SLACK:
            return best
        for when in instants(naive, tz, wildcard):
            if when <= at and (best is None or when > best):
                best = when
    raise ValueError(f"{expr!r} has no run before {at.isoformat()}")


def runs_between(expr: str, start: dt.datetime, end: dt.datetime,
                 tz: dt.tzinfo | None = None, limit: int = 1000) -> list[dt.datetime]:
    """Every run in (start, end], oldest first (at most `limit`)."""
    out: list[dt.datetime] = []
    when = start
    while len(out) < limit:
        when = next_run(expr, when, tz)
        if when > end:
            break
        out.append(when)
    return out


def period(expr: str, at: dt.datetime, tz: dt.tzinfo | None = None) -> float:
    """Seconds from the run at/after `at` to the one after it: the job's expected cadence."""
    first = next_run(expr, at - dt.timedelta(microseconds=1), tz)
    return (next_run(expr, first, tz) - first).total_seconds()


def default_grace(period_seconds: float) -> float:
    """How late a run may be before it counts as missed: 10% of the period, at least 60 s."""
    return max(60.0, 0.1 * period_seconds)
