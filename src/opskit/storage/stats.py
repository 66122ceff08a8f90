"""Aggregates over the journal for `opskit metrics`: SQL does the counting, on indexes, so a
journal of a million events is read in well under a second (bench/metrics_bench.py)."""

from __future__ import annotations

from opskit.storage.journal import Journal

# The events counted by service and result: opskit_deploys_total, opskit_rollbacks_total.
COUNTED = ("deploy.complete", "deploy.fail", "rollback.complete", "rollback.fail")


def counts_by_service(journal: Journal, types: tuple[str, ...] = COUNTED) -> list[tuple[str, str | None, int]]:
    """(type, service, events) for each of types: an index-only scan of events_type_service."""
    marks = ",".join("?" * len(types))
    return [(str(t), s, int(n)) for t, s, n in journal.conn.execute(
        f"SELECT type, service, COUNT(*) FROM events INDEXED BY events_type_service "
        f"WHERE type IN ({marks}) GROUP BY type, service ORDER BY type, service", types)]


def quarantined_by_service(journal: Journal) -> dict[str, int]:
    return {str(s): int(n) for s, n in journal.conn.execute(
        "SELECT service, COUNT(*) FROM quarantine WHERE released IS NULL GROUP BY service")}


def event_count(journal: Journal) -> int:
    return int(journal.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
