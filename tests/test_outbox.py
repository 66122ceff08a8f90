"""The outbox table's own rules, in-process on a real journal with a FakeClock: who holds a
row, claiming a channel behind a live holder, and how a delivery is finished."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base.clock import FakeClock, iso
from opskit.storage import outbox
from opskit.storage.journal import Journal


@pytest.fixture
def holder() -> Iterator[int]:
    """The pid of another live process (a concurrent `notify --flush`)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait(10)


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                       text=True, check=True)
    return int(p.stdout)


def add(j: Journal, clock: FakeClock, channel: str = "ops", text: str = "m") -> int:
    return outbox.enqueue(j, clock, channel, level="info", title=None, message=text, service=None, event_id=None)


def mark_sending(j: Journal, row_id: int, pid: int, at: str | None) -> None:
    with j.tx() as c:
        c.execute("UPDATE outbox SET status = 'sending', claimed_by = ?, claimed_at = ? WHERE id = ?",
                  (pid, at, row_id))


def test_held_elsewhere_only_by_a_live_fresh_claim(state_dir: Path, holder: int) -> None:
    j, clock = Journal(state_dir), FakeClock()
    rid = add(j, clock)
    row = outbox.get(j, rid)
    assert row is not None and not outbox.held_elsewhere(row, clock.now())  # queued: nobody's
    now = clock.now()
    live = dataclasses.replace(row, status="sending", claimed_by=holder, claimed_at=iso(now))
    assert outbox.held_elsewhere(live, now)
    assert not outbox.held_elsewhere(dataclasses.replace(live, claimed_by=dead_pid()), now)
    assert not outbox.held_elsewhere(dataclasses.replace(live, claimed_at=None), now)
    assert not outbox.held_elsewhere(dataclasses.replace(live, claimed_at="not a time"), now)
    just_fresh = now + dt.timedelta(seconds=outbox.CLAIM_STALE - 1)
    stale = now + dt.timedelta(seconds=outbox.CLAIM_STALE)
    assert outbox.held_elsewhere(live, just_fresh) and not outbox.held_elsewhere(live, stale)


def test_claim_behind_a_live_holder_takes_only_the_fresh_message(state_dir: Path, holder: int) -> None:
    j, clock = Journal(state_dir), FakeClock()
    held, backlog, fresh = add(j, clock, text="held"), add(j, clock, text="backlog"), add(j, clock, text="fresh")
    other = add(j, clock, channel="other")
    mark_sending(j, held, holder, iso(clock.now()))
    rows, left = outbox.claim_channel(j, clock, "ops", fresh=fresh)
    assert [r.id for r in rows] == [fresh] and left == 2  # the holder keeps its queue and order
    [r] = rows
    assert (r.status, r.claimed_by, r.claimed_at) == ("sending", os.getpid(), iso(clock.now()))
    assert outbox.get(j, backlog).status == "queued"  # type: ignore[union-attr]
    assert outbox.get(j, held).claimed_by == holder  # type: ignore[union-attr]
    # a fresh id that the holder already has is not taken from it
    rows, left = outbox.claim_channel(j, clock, "ops", fresh=held)
    assert rows == [] and left == 3
    # with no fresh message nothing is claimed at all
    assert outbox.claim_channel(j, clock, "ops") == ([], 3)
    # another channel is not held back by this one
    rows, left = outbox.claim_channel(j, clock, "other")
    assert [r.id for r in rows] == [other] and left == 0
    assert outbox.channels_with_work(j) == ["ops", "other"]


def test_claim_takes_a_dead_holders_whole_queue_in_order(state_dir: Path) -> None:
    j, clock = Journal(state_dir), FakeClock()
    ids = [add(j, clock, text=f"m{i}") for i in range(3)]
    mark_sending(j, ids[0], dead_pid(), iso(clock.now()))
    rows, left = outbox.claim_channel(j, clock, "ops")
    assert [r.id for r in rows] == ids and left == 0
    assert {r.claimed_by for r in rows} == {os.getpid()}


def test_finish_records_the_outcome_and_stamps_only_a_delivery(state_dir: Path) -> None:
    j, clock = Journal(state_dir), FakeClock()
    a, b, c = add(j, clock), add(j, clock), add(j, clock)
    outbox.claim_channel(j, clock, "ops")
    clock.advance(42)
    later = dt.datetime(2026, 4, 26, 4, 0, tzinfo=dt.timezone.utc)
    assert outbox.finish(j, clock, a, "delivered", attempts=2, remote_id="m-1")
    assert outbox.finish(j, clock, b, "queued", attempts=1, error="HTTP 503 https://discord.com/api/webhooks/1/tok",
                         next_try=later)
    ra, rb = outbox.get(j, a), outbox.get(j, b)
    assert ra is not None and rb is not None
    assert (ra.status, ra.attempts, ra.delivered, ra.remote_id, ra.last_error, ra.claimed_by, ra.claimed_at) == (
        "delivered", 2, iso(clock.now()), "m-1", None, None, None)
    assert (rb.status, rb.attempts, rb.delivered, rb.next_try, rb.claimed_by) == (
        "queued", 1, None, iso(later), None)
    assert rb.last_error == "HTTP 503 https://discord.com/api/webhooks/***"  # masked before it is stored
    assert outbox.finish(j, clock, c, "queued", attempts=1, error="")
    assert outbox.get(j, c).last_error is None  # type: ignore[union-attr]  # an empty error is none
    assert not outbox.finish(j, clock, a, "delivered", attempts=1)  # no longer ours: not touched twice
    assert outbox.get(j, a).attempts == 2  # type: ignore[union-attr]
    assert outbox.summary(j) == {"ops": {"delivered": 1, "queued": 2}} and outbox.queued_count(j) == 2
    assert outbox.get(j, 9999) is None
