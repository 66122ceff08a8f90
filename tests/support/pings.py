"""The ping receiver as a fixture, and a dump of every journal table (a secret must be in none)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.standins.pings import PingReceiver


@pytest.fixture(name="pings")
def pings_fixture() -> Iterator[PingReceiver]:
    r = PingReceiver.start()
    try:
        yield r
    finally:
        r.stop()


def dump_journal(state_dir: Path) -> str:
    conn = sqlite3.connect(state_dir / "journal.db")
    try:
        out = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            out += [repr(row) for row in conn.execute(f"SELECT * FROM {table}")]
        return "\n".join(out)
    finally:
        conn.close()
