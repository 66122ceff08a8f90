"""The journal is not a single point of failure: a state dir that fills up during the gate
(a real, small tmpfs), and a journal that cannot be written at all, still end with the bad
commit reverted, the service healthy and the owner told; what could not be journaled is
kept aside and journaled once when there is room again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import proc
from opskit.git.repo import Git
from opskit.storage import fallback
from opskit.storage.journal import Journal
from tests.support.pipeline import Stage, env_for, hooked_stage
from tests.support.reliability import REAL_GIT, wait_until


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    if shutil.which("mount") is None:
        return "no mount(8) here"
    return None


@pytest.fixture
def small_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 16 MiB tmpfs as the state dir, unmounted afterwards."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "state"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(mnt))
    try:
        yield mnt
    finally:
        for p in fallback.locations(mnt)[1:]:
            p.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(where: Path) -> Path:
    """Fill the filesystem to the last block; returns the filler (delete it to free the space)."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
        return bool(resp.status == 200)


def test_state_dir_fills_during_the_gate(tmp_path: Path, small_state_dir: Path) -> None:
    st: Stage = hooked_stage(tmp_path, health={"startup": 1.5, "window": 0.5})
    try:
        good = st.sb.tip()
        bad = st.sb.commit({"service.mode": "crash\n"}, "service goes crash")
        p = subprocess.Popen([REAL_GIT, "push", "origin", "master"], cwd=st.sb.dev, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        j = st.journal()
        wait_until(lambda: any(r["step"] == "health" and r["sha"] == bad for r in j.running_deploys("svc")),
                   30, "the gate")
        pid = int(j.running_deploys("svc")[0]["pid"])
        filler = _fill(small_state_dir)
        p.communicate(timeout=90)
        wait_until(lambda: not proc.pid_alive(pid), 60, "the pipeline to end")
        # Production: reverted and healthy, although no event of it could be written.
        bare = Git(st.sb.bare)
        tip = st.sb.tip()
        assert tip != bad and bare.parents(tip) == [bad] and bare.tree(tip) == bare.tree(good)
        assert st.worktree_head() == tip and _healthy(st.port)
        # The owner was told, straight through the channel, and why it came that way.
        assert st.receiver is not None
        msgs = st.receiver.wait_for(1, timeout=15)
        text = "\n".join(m.body.get("content", "") for m in msgs)
        assert "disk full" in text and "journal.db" in text, text
        kept = fallback.pending(small_state_dir)
        assert kept > 0, "the failed writes must have been kept aside"
        # Space freed: the next journal that opens journals what was kept, once.
        filler.unlink()
        j2 = Journal(small_state_dir)
        # SQLite may still fit a write or two into WAL space it reuses; whatever did not fit is late.
        types = [e.type for e in j2.query(service="svc")]
        assert all(types.count(t) == 1 for t in ("health.fail", "rollback.start", "rollback.complete")), types
        late = [e for e in j2.query(service="svc") if e.data.get("journaled_late")]
        assert late, "nothing was kept aside: the disk did not fill"
        assert fallback.pending(small_state_dir) == 0
        again = Journal(small_state_dir)
        assert len([e for e in again.query(service="svc") if e.data.get("journaled_late")]) == len(late)
        rows = {r["sha"]: r["status"] for r in again.deploys("svc")}
        assert rows.get(tip) == "healthy" and rows.get(bad) == "failed", rows
        assert again.last_good("svc") == tip
    finally:
        st.close()


def test_unwritable_journal_still_reverts_and_tells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every journal write fails (as on a corrupt or read-only journal) from the gate on:
    the revert still lands, is redeployed and re-gated, and the owner is told directly."""
    from tests.support.pipeline import seeded_stage

    st = seeded_stage(tmp_path, health={"startup": 1.0, "window": 0.5})
    try:
        good = st.sb.tip()
        bad = st.good(mode="crash", message="crash")
        real_tx = Journal.tx
        broken = {"on": False}

        def tx(self: Journal):  # type: ignore[no-untyped-def]
            if broken["on"]:
                raise sqlite3.DatabaseError("database disk image is malformed")
            return real_tx(self)

        monkeypatch.setattr(Journal, "tx", tx)
        from opskit.deploy import health

        real_gate = health.gate

        def gate(*a, **kw):  # type: ignore[no-untyped-def]
            broken["on"] = True
            return real_gate(*a, **kw)

        monkeypatch.setattr(health, "gate", gate)
        lines: list[str] = []
        r = st.deploy(bad, lines=lines)
        assert r.status == "reverted", (r, lines[-10:])
        tip = st.sb.tip()
        assert Git(st.sb.bare).tree(tip) == Git(st.sb.bare).tree(good) and st.worktree_head() == tip
        assert _healthy(st.port)
        assert st.receiver is not None
        text = "\n".join(m.body.get("content", "") for m in st.receiver.wait_for(1, timeout=15))
        assert "database corrupt" in text and "opskit journal recover" in text, text
        monkeypatch.setattr(Journal, "tx", real_tx)
        j = st.journal()
        late = {e.type for e in j.query(service="svc") if e.data.get("journaled_late")}
        assert {"health.fail", "rollback.start", "rollback.complete", "notify.sent"} <= late, late
        assert j.last_good("svc") == tip
        kv = json.loads(json.dumps(j.kv_all(fallback.SCOPE)))
        assert len(kv) >= 4
    finally:
        st.close()


def _garbage_over_every_page(db: Path) -> None:
    """A real corruption: every page but the header overwritten (a failing disk, a stray dd)."""
    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size, pages = c.execute("PRAGMA page_size").fetchone()[0], c.execute("PRAGMA page_count").fetchone()[0]
    c.close()
    with open(db, "r+b") as f:
        for n in range(2, pages + 1):
            f.seek((n - 1) * size)
            f.write(bytes((i * 37 + n) % 251 for i in range(size)))


@contextlib.contextmanager
def _corrupted_when_the_gate_starts(st: Stage, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """journal.db is overwritten with garbage as the health gate begins, for the block's deploy."""
    from opskit.deploy import health

    real_gate = health.gate

    def gate(*a, **kw):  # type: ignore[no-untyped-def]
        _garbage_over_every_page(st.settings.state_dir / "journal.db")
        return real_gate(*a, **kw)

    monkeypatch.setattr(health, "gate", gate)
    try:
        yield
    finally:
        monkeypatch.setattr(health, "gate", real_gate)


def test_a_journal_corrupted_during_the_gate_still_reverts_and_tells(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage in journal.db itself mid-gate: reads fail as well as writes (the last known-good
    commit cannot be looked up). The revert goes on from git's facts, is redeployed and re-gated,
    the owner is told, and `opskit journal recover` brings the story back."""
    from tests.support.pipeline import seeded_stage

    st = seeded_stage(tmp_path, health={"startup": 1.0, "window": 0.5})
    try:
        j = st.journal()
        for i in range(300):  # pages enough that the damage hits tables, not just the header
            j.append("drift.detected", "svc", {"n": i, "pad": "x" * 60})
        j.close()
        good = st.sb.tip()
        bad = st.good(mode="crash", message="crash")
        lines: list[str] = []
        with _corrupted_when_the_gate_starts(st, monkeypatch):
            r = st.deploy(bad, lines=lines)
        assert r.status == "reverted", (r, lines[-10:])
        tip = st.sb.tip()
        bare = Git(st.sb.bare)
        assert bare.parents(tip) == [bad] and bare.tree(tip) == bare.tree(good) and st.worktree_head() == tip
        assert _healthy(st.port)
        assert st.receiver is not None
        [told] = st.receiver.wait_for(1, timeout=15)
        text = told.body.get("content", "")
        assert "was reverted automatically" in text and "database corrupt" in text, text
        assert "opskit journal recover" in text, text
        assert "Event: not journaled yet (kept aside until the journal can take it)" in text, text
        rec = subprocess.run([sys.executable, "-m", "opskit", "journal", "recover"], capture_output=True,
                             text=True, timeout=60, check=False, env={**os.environ, **env_for(st)})
        assert rec.returncode == 1, rec.stderr  # rows were lost with the damaged pages, and it says so
        assert "some rows could not be read and are lost" in rec.stdout, rec.stdout
        events = Journal(st.settings.state_dir).query(service="svc")
        types = [e.type for e in events]
        assert all(types.count(t) == 1 for t in ("health.fail", "rollback.start", "rollback.complete")), types
        after = Journal(st.settings.state_dir)
        assert after.last_good("svc") == tip
        assert [q["tree"] for q in after.quarantine_list("svc")] == [bare.tree(bad)]  # kept aside, then journaled
    finally:
        st.close()


def test_a_corrupt_journal_never_turns_a_failed_older_deploy_into_a_revert_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`deploy --sha OLD` of a commit the branch has long moved past fails its gate while the
    journal is corrupted: with no history to read, what was live before the deploy is put back,
    and no revert commit undoing good work lands on the branch."""
    from tests.support.pipeline import seeded_stage

    st = seeded_stage(tmp_path, health={"startup": 1.0, "window": 0.5})
    try:
        old = st.good(mode="crash", message="an old bad commit")
        fixed = st.good(mode="healthy", files={"fix.txt": "fixed\n"}, message="fixed it")
        assert st.deploy(fixed).ok
        lines: list[str] = []
        with _corrupted_when_the_gate_starts(st, monkeypatch):
            r = st.deploy(old, lines=lines)
        assert r.status == "reverted" and r.revert is not None and r.revert.revert_sha == fixed, lines[-8:]
        assert st.sb.tip() == fixed and st.worktree_head() == fixed and _healthy(st.port)
    finally:
        st.close()


def test_push_to_an_already_full_state_dir_is_still_reverted_and_told(tmp_path: Path, small_state_dir: Path) -> None:
    st: Stage = hooked_stage(tmp_path, health={"startup": 1.0, "window": 0.5})
    try:
        good = st.sb.tip()
        filler = _fill(small_state_dir)
        bad = st.sb.commit({"service.mode": "crash\n"}, "service goes crash")
        r = st.sb.push("master", check=False)
        if r.returncode != 0:
            # SQLite could not even open the journal (its -shm cannot be made on a full disk):
            # pre-receive fails closed, and says why in words an operator can act on. Nothing landed.
            assert "pre-receive hook declined" in r.stderr and st.sb.tip() == good, r.stderr
            assert "disk" in r.stderr and str(small_state_dir) in r.stderr and "df -h" in r.stderr, r.stderr
            assert st.worktree_head() == good
            return
        bare = Git(st.sb.bare)
        wait_until(lambda: st.sb.tip() != bad and st.worktree_head() == st.sb.tip(), 60, "the revert")
        tip = st.sb.tip()
        assert bare.parents(tip) == [bad] and bare.tree(tip) == bare.tree(good) and _healthy(st.port)
        assert st.receiver is not None
        text = "\n".join(m.body.get("content", "") for m in st.receiver.wait_for(1, timeout=15))
        assert "disk full" in text, text
        assert "disk full" in r.stderr and "df -h" in r.stderr, r.stderr  # the pusher is told too
        filler.unlink()
        events = Journal(small_state_dir).query(service="svc")
        types = [e.type for e in events]
        assert all(types.count(t) == 1 for t in ("push.received", "health.fail", "rollback.complete")), types
        assert any(e.data.get("journaled_late") for e in events)
    finally:
        st.close()


def test_a_freeze_kept_aside_is_in_force_before_it_is_replayed(tmp_path: Path) -> None:
    """A revert that fails on a full disk freezes the service: until the journal can take the
    freeze, it waits in the fallback log, and every reader must already honour it."""
    from opskit.storage import fallback
    from opskit.storage.journal import Journal

    j = Journal(tmp_path)
    assert j.frozen("svc") is None
    fallback.keep(tmp_path, {"kind": "kv", "scope": "frozen", "key": "svc",
                             "value": json.dumps({"reason": "rollback failed", "event_id": 0})},
                  sqlite3.OperationalError("database or disk is full"), tmp_path / "journal.db")
    assert j.frozen("svc") == {"reason": "rollback failed", "event_id": 0}
    assert j.frozen("other") is None
    Journal(tmp_path)  # an open with room journals it, once
    assert j.kv_get("frozen", "svc") == {"reason": "rollback failed", "event_id": 0}
    assert fallback.pending(tmp_path) == 0 and j.frozen("svc") == {"reason": "rollback failed", "event_id": 0}


def test_rows_kept_in_memory_never_share_an_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # While the journal cannot be written, deploy rows live in memory under negative ids; the
    # first finishing before the second must not hand the second's id to a third.
    j = Journal(tmp_path / "state")
    real_tx = Journal.tx

    def full(self: Journal):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Journal, "tx", full)
    a = j.deploy_start("svc", "a" * 40, previous=None, chain="c")
    b = j.deploy_start("svc", "b" * 40, previous=None, chain="c")
    j.deploy_finish(a, "failed", "gate")
    c = j.deploy_start("svc", "c" * 40, previous=None, chain="c")
    assert len({a, b, c}) == 3 and max(a, b, c) < 0
    j.deploy_finish(b, "reverted", "gate")
    j.deploy_finish(c, "healthy", None)
    monkeypatch.setattr(Journal, "tx", real_tx)
    again = Journal(tmp_path / "state")  # replays what was kept aside
    assert {(r["sha"][0], r["status"]) for r in again.deploys("svc")} == {("a", "failed"), ("b", "reverted"),
                                                                          ("c", "healthy")}


@pytest.mark.parametrize("error, kind", [
    (OSError(errno.ENOSPC, "No space left on device"), "full"),
    (sqlite3.OperationalError("database or disk is full"), "full"),
    (sqlite3.DatabaseError("database disk image is malformed"), "corrupt"),
    (sqlite3.DatabaseError("file is not a database"), "corrupt"),
    (sqlite3.DatabaseError("database corrupt at page 3"), "corrupt"),
    (sqlite3.OperationalError("disk I/O error"), "io"),
    (OSError(errno.EIO, "Input/output error"), "io"),
    (OSError(errno.EACCES, "Permission denied"), "io"),
    (sqlite3.OperationalError("database is locked"), "other"),
], ids=["enospc", "sqlite-full", "malformed", "not-a-database", "corrupt", "sqlite-io", "eio", "eacces", "locked"])
def test_each_journal_fault_is_told_apart(error: BaseException, kind: str) -> None:
    # the kind picks the one-line fix the operator reads (free space, journal recover, the disk)
    assert fallback.kind_of(error) == kind


def test_a_read_done_without_is_said_once_per_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fallback, "_WARNED", set())
    db = tmp_path / "journal.db"
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    fallback.warn_read(db, corrupt)
    fallback.warn_read(db, corrupt)  # every later read of a broken journal: not said again
    assert capsys.readouterr().err == (
        f"opskit: {fallback.describe(db, corrupt)}; going on without what it holds (the last known-good commit, "
        "the quarantine list): git has the facts\n")
    assert fallback.describe(db, corrupt).startswith("database corrupt: the journal ")
    full = sqlite3.OperationalError("database or disk is full")
    fallback.warn_read(db, full)  # another cause is news
    fallback.warn_read(db, full)
    assert capsys.readouterr().err.count("opskit: disk full: cannot write the journal ") == 1


# --- where a record kept aside goes, and how it is read back (fallback.keep, kept_value, pending) ---

@pytest.fixture
def aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A state dir and the temp dir's fallback file for it (in this test's own temp dir)."""
    monkeypatch.setattr(fallback, "_WARNED", set())
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    state = tmp_path / "state"
    state.mkdir()
    first, second = fallback.locations(state)
    assert first == state / fallback.NAME and second.parent == tmp_path / "tmp"
    return state, second


FULL = sqlite3.OperationalError("database or disk is full")
RECORD: dict[str, object] = {"kind": "event", "type": "note", "data": {"who": "é", "at": Path("/srv/app")}}


def _line(record: dict[str, object]) -> int:
    """The length of keep's line for record (its id is 32 hex digits)."""
    return len((json.dumps({"id": "0" * 32, **record}, default=str, ensure_ascii=False) + "\n").encode())


def test_keep_writes_one_utf8_json_line_says_where_once_and_returns_it(
        aside: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    state, _ = aside
    db = state / "journal.db"
    where = fallback.keep(state, {**RECORD, "raw": "\udcff"}, FULL, db)  # a name read with surrogateescape
    assert where == str(state / fallback.NAME)
    fallback.keep(state, RECORD, FULL, db)
    data = (state / fallback.NAME).read_bytes()
    lines = data.splitlines()
    assert len(lines) == 2 and b'"who": "\xc3\xa9"' in lines[0] and b'"raw": "?"' in lines[0]
    first = json.loads(lines[0])
    assert len(first["id"]) == 32 and {k: v for k, v in first.items() if k != "id"} == {
        "kind": "event", "type": "note", "data": {"who": "é", "at": "/srv/app"}, "raw": "?"}
    assert capsys.readouterr().err == (
        f"opskit: {fallback.describe(db, FULL)}; what could not be journaled is kept in {where}\n")


@pytest.mark.parametrize("how", ["link", "full", "write-fails"])
def test_keep_goes_on_to_the_temp_dirs_file_when_the_state_dirs_is_refused_full_or_failing(
        aside: tuple[Path, Path], how: str, tmp_path: Path) -> None:
    state, second = aside
    if how == "link":
        (state / fallback.NAME).symlink_to(tmp_path / "elsewhere")
    elif how == "full":  # one byte more than room for the line
        (state / fallback.NAME).write_bytes(b"\n" * (fallback.MAX_BYTES - _line(RECORD) + 1))
    else:  # a filesystem with no block left: the append itself fails (ENOSPC)
        why = _can_mount()
        if why:
            pytest.skip(why)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(state)], check=True)
    try:
        if how == "write-fails":
            _fill(state)
        assert fallback.keep(state, RECORD, FULL, state / "journal.db") == str(second)
        assert json.loads(second.read_bytes())["data"] == {"who": "é", "at": "/srv/app"}
        assert not (tmp_path / "elsewhere").exists()
    finally:
        if how == "write-fails":
            subprocess.run(["umount", "-l", str(state)], check=False)


def test_keep_fills_the_state_dirs_file_to_the_last_byte(aside: tuple[Path, Path]) -> None:
    state, second = aside
    (state / fallback.NAME).write_bytes(b"\n" * (fallback.MAX_BYTES - _line(RECORD)))
    assert fallback.keep(state, RECORD, FULL, state / "journal.db") == str(state / fallback.NAME)
    assert (state / fallback.NAME).stat().st_size == fallback.MAX_BYTES and not second.exists()


def test_keep_with_nowhere_to_write_puts_the_record_on_stderr(
        aside: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, second = aside
    (state / fallback.NAME).symlink_to(tmp_path / "elsewhere")
    second.symlink_to(tmp_path / "elsewhere")
    db = state / "journal.db"
    assert fallback.keep(state, RECORD, FULL, db) == "stderr"
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"opskit: {fallback.describe(db, FULL)}; NOT journaled, recorded here: {{\"id\": ")
    assert err[-1].endswith('"kind": "event", "type": "note", "data": {"who": "é", "at": "/srv/app"}}')
    assert not (tmp_path / "elsewhere").exists()


def test_kept_value_reads_past_torn_lines_and_either_location_and_pending_counts_both(
        aside: tuple[Path, Path]) -> None:
    state, second = aside
    assert fallback.kept_value(state, "frozen", "svc") is None and fallback.pending(state) == 0
    # only the temp dir's file (the state dir's is absent), with a torn, non-UTF-8 line first
    second.write_bytes(b"\xff\xfe{torn\n"
                       + json.dumps({"kind": "kv", "scope": "frozen", "key": "svc", "value": '{"n": 1}'}).encode()
                       + b"\n" + json.dumps({"kind": "kv", "scope": "frozen", "key": "svc",
                                             "value": {"n": 2}}).encode() + b"\n")
    os.chmod(second, 0o600)
    assert fallback.kept_value(state, "frozen", "svc") == {"n": 2}
    assert fallback.kept_value(state, "frozen", "other") is None
    (state / fallback.NAME).write_bytes(b"{}\n")
    assert fallback.pending(state) == 4


def test_describe_says_each_kind_of_fault_with_its_fix() -> None:
    db = Path("/var/lib/opskit/journal.db")
    assert fallback.describe(db, FULL) == (
        "disk full: cannot write the journal /var/lib/opskit/journal.db (database or disk is full); free space on "
        "the state dir's filesystem (`df -h /var/lib/opskit`); opskit journals what it kept aside once there is room")
    assert fallback.describe(db, sqlite3.DatabaseError("database disk image is malformed")) == (
        "database corrupt: the journal /var/lib/opskit/journal.db is damaged (database disk image is malformed); "
        "run `opskit journal recover` (it keeps the damaged file aside and rebuilds from what is readable)")
    assert fallback.describe(db, OSError(errno.EIO, "Input/output error")) == (
        "disk I/O error on the journal /var/lib/opskit/journal.db ([Errno 5] Input/output error): the disk may be "
        "full or failing; check `df -h /var/lib/opskit` and `dmesg`, then `opskit doctor`")
    assert fallback.describe(db, sqlite3.OperationalError("database is locked")) == (
        "the journal /var/lib/opskit/journal.db cannot be written (OperationalError: database is locked); "
        "check `opskit doctor`")


def test_replay_journals_each_whole_record_past_torn_lines_and_marks_it(aside: tuple[Path, Path]) -> None:
    from opskit.storage.journal import SCHEMA

    state, second = aside  # the state dir's file is absent: the temp dir's is replayed still
    good = [{"id": "a" * 32, "kind": "event", "ts": "2026-12-07T23:00:00Z"}, {"id": "b" * 32, "kind": "kv"}]
    second.write_bytes(b"\xff{torn\n" + json.dumps(good[0]).encode() + b"\n[1]\n{}\n"
                       + json.dumps(good[1]).encode() + b"\n")
    os.chmod(second, 0o600)
    conn = sqlite3.connect(state / "j.db", isolation_level=None)
    conn.executescript(SCHEMA)
    applied: list[dict[str, object]] = []
    assert fallback.replay(state, conn, lambda _c, rec: applied.append(rec)) == 2
    assert applied == good and second.read_bytes() == b""
    assert conn.execute("SELECT key, value, updated FROM kv WHERE scope = ? ORDER BY key",
                        (fallback.SCOPE,)).fetchall() == [
        ("a" * 32, '{"kind": "event"}', "2026-12-07T23:00:00Z"), ("b" * 32, '{"kind": "kv"}', "")]
    conn.close()


def test_keep_makes_the_state_dirs_file_for_the_group_and_the_temp_dirs_for_us_alone(
        aside: tuple[Path, Path], tmp_path: Path) -> None:
    """The state dir's file is shared like the journal beside it (0660); the temp dir's, whose name
    anyone can predict, is ours alone (0600): under umask 0 nothing else narrows them."""
    state, second = aside
    old = os.umask(0)
    try:
        assert fallback.keep(state, RECORD, FULL, state / "journal.db") == str(state / fallback.NAME)
        assert stat.S_IMODE((state / fallback.NAME).stat().st_mode) == 0o660
        (state / fallback.NAME).unlink()
        (state / fallback.NAME).symlink_to(tmp_path / "elsewhere")
        assert fallback.keep(state, RECORD, FULL, state / "journal.db") == str(second)
        assert stat.S_IMODE(second.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_refused_state_dir_file_is_said_once_however_often_it_is_refused(
        aside: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, second = aside
    (state / fallback.NAME).symlink_to(tmp_path / "elsewhere")
    for _ in range(3):
        assert fallback.keep(state, RECORD, FULL, state / "journal.db") == str(second)
    err = capsys.readouterr().err.splitlines()
    refused = [ln for ln in err if "kept in" not in ln]
    assert len(refused) == 1 and refused[0].startswith(f"opskit: {state / fallback.NAME}"), err


@pytest.mark.parametrize(("planted", "trusted"), [
    ("0600", True), ("0601", True),  # ours, one link, nobody else may write: it takes the record
    ("0666", False), ("0620", False), ("0602", False), ("hard-link", False), ("another-owner", False)])
def test_the_temp_dirs_file_is_used_only_when_ours_alone_to_write(
        aside: tuple[Path, Path], tmp_path: Path, planted: str, trusted: bool) -> None:
    """Its name is predictable, so another account can plant it first; a record kept there is
    journaled by root later. The state dir's file is refused (a link) so the temp dir's is next."""
    state, second = aside
    (state / fallback.NAME).symlink_to(tmp_path / "elsewhere")
    second.write_bytes(b"")
    if planted == "hard-link":
        os.chmod(second, 0o600)
        os.link(second, tmp_path / "their-name")
    elif planted == "another-owner":
        if os.geteuid() != 0:
            pytest.skip("needs root: the file is given to another account")
        os.chmod(second, 0o600)
        os.chown(second, 1, 1)
    else:
        os.chmod(second, int(planted, 8))
    where = fallback.keep(state, RECORD, FULL, state / "journal.db")
    assert where == (str(second) if trusted else "stderr")
    assert (second.read_bytes() != b"") == trusted
    assert fallback.kept_value(state, "frozen", "svc") is None
