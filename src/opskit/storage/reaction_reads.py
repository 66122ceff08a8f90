"""The journal reads of reactions (reactions/dispatch.py): events after a cursor, where a new
cursor starts, the last result of a gate. Cursors themselves are kv rows (scope "reaction")."""

from __future__ import annotations

import json
from typing import Any

from opskit.storage.journal import Event, Journal, _row_event


def events_after(journal: Journal, after: int, limit: int) -> list[Event]:
    """Every event with an id above `after`, oldest first, at most `limit`."""
    rows = journal.conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
    return [_row_event(row) for row in rows]


def last_before(journal: Journal, when: str) -> int:
    """The id of the last event journaled before `when` (iso_precise); 0 when none."""
    row = journal.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events WHERE COALESCE(ts_precise, ts) < ?",
                               (when,)).fetchone()
    return int(row[0])


def exists(journal: Journal, event_id: int) -> bool:
    return journal.conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is not None


def last_gate(journal: Journal, name: str) -> dict[str, Any] | None:
    """A gate's last run (it has no cursor: it runs in the pipeline, not from the journal)."""
    row = journal.conn.execute(
        "SELECT id, ts, type, data FROM events WHERE type IN ('reaction.ok', 'reaction.fail') "
        "AND json_extract(data, '$.reaction') = ? ORDER BY id DESC LIMIT 1", (name,)).fetchone()
    if row is None:
        return None
    data = json.loads(row["data"])
    return {"event_id": data.get("event_id"), "result": "ok" if row["type"] == "reaction.ok" else "fail",
            "exit": data.get("exit"), "ts": row["ts"]}
