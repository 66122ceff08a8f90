"""The two event stores answer alike: the same journal reads (`Journal.query`'s filters: service,
a type prefix, types and families, since, limit, chain) over this host's SQLite journal and over
the fleet's PostgreSQL one (storage/fleet_read.py), on the same events, give the same events in
the same order, byte for byte in their data, times and links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opskit.storage import fleet_read
from opskit.storage.journal import Event, Journal
from tests.support.fleet import make_host, migrated

CASES: list[dict[str, Any]] = [
    {},
    {"service": "api"},
    {"service": "nobody"},
    {"type_prefix": "deploy."},
    {"types": ("health.fail", "rollback.")},
    {"types": ("job.ok",), "service": "web"},
    {"limit": 5},
    {"limit": 0},
    {"limit": 3, "service": "web", "type_prefix": "job."},
    {"chain": "c-0002"},
    {"since": "2026-04-26T03:57:10Z"},
    {"since": "2026-04-26T03:57:10Z", "limit": 2, "types": ("deploy.",)},
]


def _shape(events: list[Event]) -> list[tuple[Any, ...]]:
    return [(e.ts, e.ts_precise, e.type, e.service, e.data, e.chain, e.sha) for e in events]


@pytest.fixture
def both(tmp_path: Path, fleet_url: str) -> tuple[Journal, Any]:
    import datetime as dt

    from opskit.base.clock import FakeClock

    host = migrated(make_host(tmp_path, "alpha", fleet_url))
    j = host.journal()
    clock = FakeClock(dt.datetime(2026, 4, 26, 3, 57, 0, tzinfo=dt.timezone.utc))
    j.clock = clock
    kinds = ["push.received", "deploy.start", "health.fail", "rollback.start", "rollback.complete",
             "deploy.complete", "job.ok", "job.fail"]
    for i in range(24):
        clock.advance(1.25)
        j.append(kinds[i % len(kinds)], ("api", "web", None)[i % 3],
                 {"i": i, "text": "ünïcode ✓ \u202e", "nested": {"a": [1, 2, None]}},
                 chain=f"c-{i // 8:04d}", sha=f"{i:040x}" if i % 2 else None)
    assert j.fleet is not None and j.fleet.sync(j, force=True) is not None
    return j, j.fleet


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "all" for c in CASES])
def test_the_same_read_gives_the_same_events_on_both_backends(both: tuple[Journal, Any],
                                                              case: dict[str, Any]) -> None:
    j, fleet = both
    local = j.query(**case)
    shared = fleet_read.query(fleet, j, **case)
    assert _shape(shared) == _shape(local)
    if not case.get("service") == "nobody" and case.get("limit") != 0:
        assert local, "the case reads nothing on either side: it would tell nothing"
    assert all(e.host == "alpha" for e in shared)
