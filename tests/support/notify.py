"""Fixtures for notification tests: a live receiver and configs that point at it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base.clock import FakeClock
from opskit.standins.receiver import Receiver


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    """A live receiver on a free port (import receiver_fixture to use `receiver`)."""
    r = Receiver.start(hang_seconds=5.0)
    try:
        yield r
    finally:
        r.stop()


class RecordingClock(FakeClock):
    """A FakeClock that remembers every sleep, to check the waits the backoff chose."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


def channel_toml(name: str, kind: str, url: str | None = None, **extra: object) -> str:
    lines = [f"[notify.{name}]", f'type = "{kind}"']
    if url is not None:
        lines.append(f'url = "{url}"')
    for k, v in extra.items():
        if isinstance(v, str):
            lines.append(f"{k} = {json.dumps(v, ensure_ascii=False)}")  # a valid TOML basic string
        else:
            lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def config_toml(default: list[str], *channels: str) -> str:
    names = ", ".join(f'"{n}"' for n in default)
    return f"[opskit]\nnotify = [{names}]\n" + "".join(channels)


def dump_state(state_dir: Path) -> str:
    """Every value stored in the journal (events, outbox, kv), as one text to grep."""
    conn = sqlite3.connect(state_dir / "journal.db")
    out = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in conn.execute(f"SELECT * FROM {table}"):
            out.append(" ".join(str(v) for v in row))
    conn.close()
    return "\n".join(out)


def outbox_rows(state_dir: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(state_dir / "journal.db")
    conn.row_factory = sqlite3.Row
    rows = list(conn.execute("SELECT * FROM outbox ORDER BY id"))
    conn.close()
    return rows
