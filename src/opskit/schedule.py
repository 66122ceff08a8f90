"""Cron expressions: validated the way healthchecks learned to (build it, ask for next())."""

from __future__ import annotations

import datetime as dt


def validate_cron(expr: str) -> str | None:
    """None if expr is a usable five-field cron schedule, else what is wrong with it."""
    fields = expr.split()
    if len(fields) != 5:
        return f"expected 5 fields, got {len(fields)}"
    from croniter import croniter

    try:
        it = croniter(expr, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        it.get_next(dt.datetime)
    except Exception as e:  # croniter raises several unrelated types for bad input
        return str(e) or type(e).__name__
    return None
