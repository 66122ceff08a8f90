"""Recovery and placement rules that a one-line slip would break with the rest of the suite
green: journal recover sets the damaged file's -wal aside, a fallback replay that stopped
half-way journals each record exactly once, the chain's quarantine check looks at the merged
tree, and a worktree shared through a symlink or `..` is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from opskit.base import statefs
from opskit.git.repo import Git
from opskit.storage import fallback
from opskit.storage import journal as journal_mod
from opskit.storage import recover as recover_mod
from opskit.storage.journal import Journal
from opskit.storage.recover import quick_check, recover
from tests.support.chain import ChainStage, chain_stage_fixture  # noqa: F401 - a fixture
from tests.support.gitsandbox import Sandbox, make_sandbox, rev

ROOT = Path(__file__).resolve().parents[1]


# --- journal recover and the -wal ------------------------------------------------------------

def _leaves(db: Path, table: str) -> list[int]:
    c = sqlite3.connect(db)
    try:
        return [r[0] for r in c.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                        "ORDER BY pageno", (table,))]
    finally:
        c.close()


def _rows(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {"events": [tuple(r) for r in conn.execute("SELECT id, type, service, data FROM events ORDER BY id")],
            "kv": [tuple(r) for r in conn.execute("SELECT scope, key, value FROM kv ORDER BY scope, key")]}


def test_recover_sets_the_damaged_wal_aside_so_it_never_replays_onto_the_rebuilt_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    j = Journal(state)
    for i in range(1500):
        j.append("drift.detected", "svc", {"n": i, "pad": "x" * 60})
    j.close()  # the last connection checkpoints: these rows are in journal.db itself
    db = state / "journal.db"
    leaves = _leaves(db, "events")
    middle = leaves[len(leaves) // 2:len(leaves) // 2 + 2]
    # A writer that dies with its rows still in the -wal (no checkpoint, no close), as a crash leaves it.
    code = ("import os, sys\nfrom opskit.storage.journal import Journal\nj = Journal(sys.argv[1])\n"
            "for i in range(40):\n    j.append('wal.row', 'svc', {'w': i})\n"
            "j.kv_set('drift', 'svc', {'from': 'wal'})\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(state)], check=True, timeout=60, cwd=ROOT)
    wal = state / "journal.db-wal"
    assert wal.stat().st_size > 0
    wal_bytes = wal.read_bytes()
    size = 4096  # SQLite's default page size, the journal's
    with open(db, "r+b") as f:  # garbage in two leaves of events the -wal does not hold
        for n in middle:
            f.seek((n - 1) * size)
            f.write(bytes((i * 37 + n) % 251 for i in range(size)))
    assert quick_check(db)

    report = recover(state, ["svc"])
    assert report.rebuilt and report.damaged

    # What recover wrote, read from a copy of its bytes alone (no -wal anywhere near it) ...
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    shutil.copyfile(db, ref_dir / "journal.db")
    ref = sqlite3.connect(ref_dir / "journal.db")
    want = _rows(ref)
    ref.close()
    events = {t.name: t for t in report.tables}["events"]
    assert len(want["events"]) == events.recovered and 0 < events.lost  # type: ignore[operator]
    assert [json.loads(r[3])["w"] for r in want["events"] if r[1] == "wal.row"] == list(range(40))
    assert ("drift", "svc", json.dumps({"from": "wal"})) in want["kv"]  # read through the old -wal

    # ... is exactly what the journal holds once opened in the state dir.
    j2 = Journal(state)
    assert _rows(j2.conn) == want
    assert j2.kv_get("drift", "svc") == {"from": "wal"}
    j2.close()
    assert quick_check(db) == []
    # The old -wal is beside the damaged file it belongs to, untouched, for a post-mortem.
    aside = Path(report.kept_aside[0])
    assert aside.name.startswith("journal.db.damaged-") and aside.parent == state
    assert report.kept_aside[:2] == [str(aside), f"{aside}-wal"]
    assert Path(f"{aside}-wal").read_bytes() == wal_bytes


# --- the fallback log: a replay that stopped half-way ------------------------------------------

def test_a_replay_that_stopped_half_way_journals_each_kept_record_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    j = Journal(state)
    real_tx = Journal.tx

    def full(self: Journal):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Journal, "tx", full)
    for i in range(6):
        assert j.append("drill.kept", "svc", {"n": i}).id == 0  # kept aside, not journaled
    monkeypatch.setattr(Journal, "tx", real_tx)
    assert fallback.pending(state) == 6

    # The disk fills again after the third record: the replay stops there.
    real_apply = journal_mod._apply_kept
    calls: list[int] = []

    def apply_then_full(c: sqlite3.Connection, rec: dict[str, Any]) -> None:
        calls.append(json.loads(rec["data"])["n"])
        if len(calls) > 3:
            raise sqlite3.OperationalError("database or disk is full")
        real_apply(c, rec)

    monkeypatch.setattr(journal_mod, "_apply_kept", apply_then_full)
    assert j.replay_fallback() == 0  # stopped: what is left stays aside
    assert calls == [0, 1, 2, 3]
    assert sorted(e.data["n"] for e in j.query(type_prefix="drill.")) == [0, 1, 2]
    assert fallback.pending(state) == 6  # the file is only emptied after a replay that went through

    monkeypatch.setattr(journal_mod, "_apply_kept", real_apply)
    again = Journal(state)  # the next open with room replays the rest, and only the rest
    kept = [e.data["n"] for e in again.query(type_prefix="drill.")]
    assert sorted(kept) == [0, 1, 2, 3, 4, 5]
    assert fallback.pending(state) == 0
    assert again.replay_fallback() == 0
    assert sorted(e.data["n"] for e in Journal(state).query(type_prefix="drill.")) == [0, 1, 2, 3, 4, 5]


# --- the chain's quarantine check looks at the merged tree -----------------------------------

def test_a_merge_whose_tree_was_reverted_before_is_refused_though_the_branch_tip_differs(cs: ChainStage) -> None:
    g = Git(cs.sb.bare)
    base = cs.tip()
    cs.feature("feature/a", {"a.txt": "a\n"})
    cs.push("feature/a")
    cs.feature("feature/bad", {"service.mode": "crash\n", "app.txt": "v3\n"})
    p = cs.push("feature/bad")
    assert "health gate failed" in p.stderr, p.stderr
    bad_merge = cs.last("merge.complete").data["merge"]
    reverted = cs.tip()
    tree = g.tree(bad_merge)
    assert tree is not None and cs.st.journal().quarantined("svc", tree) is not None
    deploys = len(cs.st.journal().deploys("svc", limit=100))

    # The same change from an older base: its tip's tree is not the quarantined one (no a.txt),
    # so the push is taken, but merged into master it is exactly the tree that was reverted.
    head = cs.feature("feature/again", {"service.mode": "crash\n", "app.txt": "v3\n"}, base=base)
    head_tree = rev(cs.sb.dev, f"{head}^{{tree}}")
    assert head_tree != tree and cs.st.journal().quarantined("svc", head_tree) is None
    p = cs.push("feature/again")
    chain = cs.last("push.received").chain
    assert cs.last("push.received").data["ref"] == "refs/heads/feature/again"
    types = [e.type for e in cs.events(chain=chain)]
    assert "review.pass" in types and "merge.fail" in types and "merge.complete" not in types, types
    assert not [t for t in types if t.startswith(("deploy.", "health.", "rollback."))], types
    ev = cs.last("merge.fail")
    assert ev.chain == chain
    assert ev.data["reason"].startswith(f"the merged tree {tree[:12]} was auto-reverted before"), ev.data
    assert f"opskit quarantine release svc {tree[:12]}" in ev.data["reason"]
    assert f"the merged tree {tree[:12]} was auto-reverted before" in p.stderr, p.stderr
    # Nothing landed, nothing deployed: master and production stay at the revert.
    assert cs.tip() == reverted and cs.st.worktree_head() == reverted
    assert (cs.sb.worktree / "service.mode").read_text() != "crash\n"
    assert len(cs.st.journal().deploys("svc", limit=100)) == deploys
    assert cs.worktrees_left() == []


# --- a worktree shared through a symlink or `..` -----------------------------------------------

def _two_services(tmp_path: Path, sa: Sandbox, sb: Sandbox, b_worktree: str) -> Path:
    p = tmp_path / "conf" / "opskit.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f'[service.a]\nrepo = "{sa.bare}"\nworktree = "{sa.worktree}"\ndeploy = "true"\ndirect_push = true\n\n'
                 f'[service.b]\nrepo = "{sb.bare}"\nworktree = "{b_worktree}"\ndeploy = "true"\ndirect_push = true\n')
    return p


@pytest.mark.parametrize("spelling", ["symlink", "dotdot"])
def test_a_worktree_shared_through_a_symlink_or_dotdot_is_refused(tmp_path: Path, spelling: str) -> None:
    sa, sb = make_sandbox(tmp_path / "a", "a"), make_sandbox(tmp_path / "b", "b")
    if spelling == "symlink":
        other = tmp_path / "link-to-a"
        other.symlink_to(sa.worktree)
        same = str(other)
    else:
        same = str(sa.worktree.parent / "x" / ".." / sa.worktree.name)
        (sa.worktree.parent / "x").mkdir()
    assert same != str(sa.worktree) and os.path.realpath(same) == os.path.realpath(sa.worktree)
    cfg = _two_services(tmp_path, sa, sb, same)
    state = Path(os.environ["OPSKIT_STATE_DIR"])
    hooks_before = sorted(p.name for p in (sa.bare / "hooks").iterdir())
    for args in (["doctor"], ["hooks", "install", "b"], ["deploy", "b"]):
        r = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), *args], capture_output=True,
                           text=True, timeout=60, check=False, env=dict(os.environ))
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        (line,) = r.stderr.strip().splitlines()
        assert "service.b.worktree" in line and "is the same directory as service.a.worktree" in line, line
        assert same in line, line
    assert sorted(p.name for p in (sa.bare / "hooks").iterdir()) == hooks_before
    assert not (state / "journal.db").exists()


# --- journal recover, in this process: what it refuses, what it keeps, whose the new file is ---

def _journal_with_events(state: Path, n: int = 5) -> Path:
    j = Journal(state)
    for i in range(n):
        j.append("note", "svc", {"i": i})
    j.close()
    return state / "journal.db"


def test_recover_of_a_sound_journal_without_force_changes_nothing(tmp_path: Path) -> None:
    db = _journal_with_events(tmp_path)
    before = db.stat().st_ino
    report = recover(tmp_path, ["svc"])
    assert (report.path, report.damaged, report.problems, report.rebuilt, report.kept_aside) == (
        str(db), False, [], False, [])
    assert db.stat().st_ino == before and not list(tmp_path.glob("journal.db.*"))


def test_recover_refuses_without_a_journal_and_while_a_deploy_holds_a_lock(tmp_path: Path) -> None:
    from opskit.base.errors import OpsError
    from opskit.base.lock import ServiceLock

    with pytest.raises(OpsError) as e:
        recover(tmp_path, ["svc"], force=True)
    assert e.value.message == f"no journal at {tmp_path / 'journal.db'}: nothing to recover (check [opskit] state_dir)"
    _journal_with_events(tmp_path)
    with ServiceLock(tmp_path, "svc", wait=0) as held, pytest.raises(OpsError) as e:
        recover(tmp_path, ["other", "svc"], force=True)
    assert e.value.message.startswith("journal recover refused: a deploy of svc holds its lock (")
    assert e.value.message.endswith("); run it again when that deploy has finished")
    assert held is not None and not list(tmp_path.glob("journal.db.damaged-*"))


@pytest.mark.parametrize("shared", [False, True], ids=["personal", "shared"])
def test_a_forced_recover_keeps_the_old_files_aside_and_the_new_one_is_the_state_dirs(
        tmp_path: Path, shared: bool) -> None:
    import re
    import stat as st_

    state = tmp_path / "state"
    state.mkdir()
    if shared:  # the system install's state dir: setgid, the opskit group's
        os.chown(state, 0, 1)
        os.chmod(state, 0o2770)
    db = _journal_with_events(state)
    for suffix in ("-wal", "-shm"):  # what a journal killed mid-write leaves beside it
        Path(f"{db}{suffix}").write_bytes(b"")
        os.chmod(f"{db}{suffix}", 0o664 if shared else 0o644)
    old = os.umask(0o022)
    try:
        report = recover(state, ["svc"], force=True)
    finally:
        os.umask(old)
    assert report.rebuilt is True and report.damaged is False
    stamp = re.fullmatch(rf"{re.escape(str(state))}/journal\.db\.damaged-(\d{{8}}T\d{{6}}Z)", report.kept_aside[0])
    assert stamp is not None, report.kept_aside
    assert [Path(p).name for p in report.kept_aside] == [f"journal.db.damaged-{stamp.group(1)}{s}"
                                                         for s in ("", "-wal", "-shm")]
    assert all(Path(p).exists() for p in report.kept_aside)
    assert [t.line() for t in report.tables][0] == "events: 5 recovered, 0 lost"
    new = (state / "journal.db").stat()
    assert (st_.S_IMODE(new.st_mode), new.st_gid) == ((0o664, 1) if shared else (0o644, 0))
    rebuilt = Journal(state)
    assert sorted(e.data["i"] for e in rebuilt.query(type_prefix="note")) == [0, 1, 2, 3, 4]
    rebuilt.close()
    assert not list(state.glob("journal.db.rebuilding-*"))


def test_keep_shared_gives_the_group_and_its_write_and_refuses_a_file_that_is_not_the_one_built(
        tmp_path: Path) -> None:
    import stat as st_

    from opskit.base.errors import OpsError
    from opskit.storage.recover import _keep_shared

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 0, 1)
    os.chmod(state, 0o2770)
    fresh = state / "journal.db.rebuilding-1"
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, 0, 0)  # not the dir's group (a filesystem that does not inherit it)
        os.fchmod(fd, 0o600)
        _keep_shared(fd, fresh, state)
        got = os.fstat(fd)
        assert (st_.S_IMODE(got.st_mode), got.st_uid, got.st_gid) == (0o660, 0, 1)
        os.link(fresh, state / "second-name")  # a group member's hard link: not ours alone
        with pytest.raises(OpsError) as e:
            _keep_shared(fd, fresh, state)
        assert e.value.message == f"journal recover: {fresh} is not the file it just built; nothing was replaced"
        os.unlink(state / "second-name")
        os.fchown(fd, 1, -1)  # another account's file
        with pytest.raises(OpsError):
            _keep_shared(fd, fresh, state)
    finally:
        os.close(fd)


def test_still_ours_refuses_a_name_renamed_over_removed_or_linked(tmp_path: Path) -> None:
    from opskit.base import statefs
    from opskit.storage.recover import _still_ours

    fresh = tmp_path / "journal.db.rebuilding-1"
    fresh.write_bytes(b"built")
    mine = os.stat(fresh)
    _still_ours(fresh, mine)  # untouched: passes
    want = (f"{fresh}: was replaced by another file while journal recover built it; the damaged journal was "
            "left in place")
    keep = tmp_path / "kept"
    os.rename(fresh, keep)
    other = tmp_path / "other"
    other.write_bytes(b"planted")
    os.replace(other, fresh)
    with pytest.raises(statefs.Unsafe) as e:
        _still_ours(fresh, mine)
    assert str(e.value).startswith(want)
    fresh.unlink()
    with pytest.raises(statefs.Unsafe):
        _still_ours(fresh, mine)
    fresh.symlink_to(keep)  # a link to the very file built is still not the file at the name
    with pytest.raises(statefs.Unsafe):
        _still_ours(fresh, mine)


def test_quick_check_is_empty_for_a_sound_or_missing_journal_and_names_damage(tmp_path: Path) -> None:
    assert quick_check(tmp_path / "journal.db") == []
    db = _journal_with_events(tmp_path)
    assert quick_check(db) == []
    other = tmp_path / "x"
    other.mkdir()
    (other / "journal.db").write_bytes(b"this is not a database at all, only some bytes" * 100)
    assert quick_check(other / "journal.db") == ["file is not a database"]


def test_a_recover_of_damaged_pages_says_what_it_kept_and_what_was_lost(tmp_path: Path) -> None:
    from tests.test_journal_recover import _garbage

    j = Journal(tmp_path)
    for i in range(400):
        j.append("note", "svc", {"i": i, "pad": "x" * 300})
    j.close()
    db = tmp_path / "journal.db"
    extra = sqlite3.connect(db)
    extra.execute("CREATE TABLE custom (k TEXT PRIMARY KEY, v TEXT)")
    extra.executemany("INSERT INTO custom VALUES (?, ?)", [("a", "1"), ("b", "2"), ("c", "3")])
    extra.commit()
    extra.close()
    assert _garbage(db, "events", 2)
    report = recover(tmp_path, ["svc"])
    assert report.damaged and report.rebuilt and report.problems == quick_check(
        Path(report.kept_aside[0])) != []
    events = report.tables[0]
    assert events.name == "events" and events.lost and events.recovered + events.lost == 400
    assert events.line() == (f"events: {events.recovered} recovered, {events.lost} lost (ids 1–400 with gaps; "
                             "rows after the last readable one may be lost too)")
    assert [t.line() for t in report.tables[1:]] == [
        "deploys: 0 recovered, 0 lost", "quarantine: 0 recovered, 0 lost", "outbox: 0 recovered, 0 lost",
        "kv: 0 recovered, 0 lost", "custom: 3 recovered, 0 lost"]
    d = report.to_dict()
    assert (d["lost_any"], d["rebuilt"], d["damaged"], d["path"]) == (True, True, True, str(db))
    assert d["tables"][-1] == {"name": "custom", "recovered": 3, "lost": 0, "note": ""}
    assert (d["problems"], d["kept_aside"]) == (report.problems, report.kept_aside) and d["kept_aside"]
    back = sqlite3.connect(db)
    assert back.execute("SELECT k, v FROM custom ORDER BY k").fetchall() == [("a", "1"), ("b", "2"), ("c", "3")]
    assert back.execute("SELECT count(*) FROM events").fetchone() == (events.recovered,)
    back.close()
    assert quick_check(db) == []


# --- the copy of one table: rowids past an unreadable stretch, the gaps, the notes ----------------
# A row that cannot be read is made without breaking a page: its text is not UTF-8, so reading it
# raises sqlite3.OperationalError (a DatabaseError) at that row, as a damaged page does.

def _pair(tmp_path: Path, src_sql: str = "", dst_sql: str = "") -> tuple[sqlite3.Connection, sqlite3.Connection]:
    src = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    dst = sqlite3.connect(tmp_path / "dst.db", isolation_level=None)
    for conn, extra in ((src, src_sql), (dst, dst_sql)):
        conn.executescript(journal_mod.SCHEMA)
        journal_mod.add_columns(conn)
        if extra:
            conn.executescript(extra)
    return src, dst


def _fill(conn: sqlite3.Connection, table: str, ids: Iterable[int], bad: set[int]) -> None:
    """Rows with these ids, every NOT NULL column filled; the rows in bad cannot be read back."""
    info = list(conn.execute(f'PRAGMA table_info("{table}")'))
    key = next(r[1] for r in info if r[5])
    cols = [r[1] for r in info if r[1] == key or (r[3] and r[4] is None)]
    text = next(c for c in cols if c != key)
    for i in ids:
        vals = ", ".join("?" if c == key else ("CAST(X'FF' AS TEXT)" if c == text and i in bad else "'x'")
                         for c in cols)
        conn.execute(f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({vals})', (i,))


@pytest.mark.parametrize("table", ["events", "deploys", "outbox"])
def test_copy_steps_past_unreadable_rows_further_each_time_and_counts_the_gaps(tmp_path: Path, table: str) -> None:
    src, dst = _pair(tmp_path)
    _fill(src, table, range(1, 21), bad={6, 7, 8, 9})
    rep = recover_mod._copy(src, dst, table)
    # Row 6 fails after 1-5: the scan goes on after 6, then 8 (row 7 failed), then 12 (row 9
    # failed): 10-12 are stepped over with the unreadable ones, and counted lost with them.
    assert dataclasses.astuple(rep) == (table, 13, 7, "ids 1–20 with gaps; rows after the last readable one "
                                                      "may be lost too")
    assert [r[0] for r in dst.execute(f'SELECT rowid FROM "{table}" ORDER BY rowid')] == [
        *range(1, 6), *range(13, 21)]


def test_copy_of_a_table_whose_last_row_is_unreadable_has_no_gap_but_says_so(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path)
    _fill(src, "events", range(1, 7), bad={6})
    assert dataclasses.astuple(recover_mod._copy(src, dst, "events")) == (
        "events", 5, 0, "rows after the last readable one may be lost too")


def test_copy_looks_up_to_2_to_the_41_rowids_past_an_unreadable_stretch(tmp_path: Path) -> None:
    sql = "CREATE TABLE wide (k INTEGER PRIMARY KEY, v TEXT);"
    src, dst = _pair(tmp_path, sql, sql)
    # -1 and 1 are read; every retry (after 2, 4, 8 … 2**41) lands on an unreadable row until
    # the last one, 2**40 further than the one before it (the scan's limit), lands past them all.
    src.execute("INSERT INTO wide VALUES (-1, 'a'), (1, 'b')")
    for k in [2, *(2**j + 1 for j in range(1, 41))]:
        src.execute("INSERT INTO wide VALUES (?, CAST(X'FF' AS TEXT))", (k,))
    src.execute("INSERT INTO wide VALUES (?, 'c')", (2**41 + 5,))
    rep = recover_mod._copy(src, dst, "wide")
    assert dataclasses.astuple(rep) == ("wide", 3, None, "part of the table was unreadable")
    assert dst.execute("SELECT k, v FROM wide ORDER BY k").fetchall() == [(-1, "a"), (1, "b"), (2**41 + 5, "c")]


def test_copy_of_a_table_missing_unlike_or_older_in_the_damaged_file(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, "CREATE TABLE other (a, b); CREATE TABLE older (k INTEGER PRIMARY KEY, v);"
                               "INSERT INTO older VALUES (1, 'one'), (2, 'two');",
                     "CREATE TABLE gone (k, v); CREATE TABLE other (k, v);"
                     "CREATE TABLE older (k INTEGER PRIMARY KEY, v, added);")
    assert dataclasses.astuple(recover_mod._copy(src, dst, "gone")) == (
        "gone", 0, None, "part of the table was unreadable")
    assert dataclasses.astuple(recover_mod._copy(src, dst, "other")) == (
        "other", 0, None, "the table could not be read")
    # a table of an older release: the columns it has are copied, the ones added since stay NULL
    assert dataclasses.astuple(recover_mod._copy(src, dst, "older")) == ("older", 2, 0, "")
    assert dst.execute("SELECT k, v, added FROM older ORDER BY k").fetchall() == [(1, "one", None), (2, "two", None)]


def test_build_reports_each_table_whose_schema_or_page_cannot_be_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = _journal_with_events(state, 2)
    c = sqlite3.connect(db)
    c.create_collation("made_up", lambda a, b: (a > b) - (a < b))
    c.executescript("CREATE TABLE odd (v TEXT COLLATE made_up); CREATE TABLE approvals (id INTEGER PRIMARY KEY, who);"
                    "INSERT INTO approvals VALUES (1, 'ann'), (2, 'bob');")
    c.close()
    seen = statefs.check_sqlite(db, state)
    assert seen is not None
    reports = recover_mod._build(db, tmp_path / "built.db", state, seen)
    assert [dataclasses.astuple(r) for r in reports] == [
        ("events", 2, 0, ""), ("deploys", 0, 0, ""), ("quarantine", 0, 0, ""), ("outbox", 0, 0, ""),
        ("kv", 0, 0, ""), ("odd", 0, None, "its schema could not be recreated"), ("approvals", 2, 0, "")]
    assert reports[5].line() == "odd: 0 recovered, an unknown number lost (its schema could not be recreated)"
    # the file copied is the one check_sqlite saw: a stat of another file is Unsafe, not a fresh look
    other = os.stat(tmp_path / "built.db")
    with pytest.raises(statefs.Unsafe):
        recover_mod._build(db, tmp_path / "again.db", state, other)
    # the schema page itself unreadable: opskit's own tables are still tried, each says why
    b = bytearray(db.read_bytes())
    b[100:4096] = b"\xab" * (4096 - 100)
    db.write_bytes(bytes(b))
    seen = statefs.check_sqlite(db, state)
    assert seen is not None
    reports = recover_mod._build(db, tmp_path / "third.db", state, seen)
    assert [dataclasses.astuple(r) for r in reports] == [
        (t, 0, None, "unreadable: database disk image is malformed") for t in recover_mod.KNOWN]


def test_rebuild_writes_the_built_journal_through_the_descriptor_and_leaves_no_work_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    db = _journal_with_events(state, 3)
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    seen = statefs.check_sqlite(db, state)
    assert seen is not None
    out = tmp_path / "out.db"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(statefs.Unsafe):
            recover_mod._rebuild(db, fd, state, os.stat(out))
        reports = recover_mod._rebuild(db, fd, state, seen)
    finally:
        os.close(fd)
    assert dataclasses.astuple(reports[0]) == ("events", 3, 0, "") and list(work.iterdir()) == []
    back = sqlite3.connect(out)
    assert [r[0] for r in back.execute("SELECT data FROM events ORDER BY id")] == [
        '{"i": 0}', '{"i": 1}', '{"i": 2}']
    back.close()


def test_copy_of_a_table_whose_first_row_is_unreadable_keeps_the_rest(tmp_path: Path) -> None:
    """The stepping from -2**62 used to give up (2**41 further) long before rowid 1: a table
    whose first row could not be read was lost whole."""
    src, dst = _pair(tmp_path)
    _fill(src, "events", range(1, 21), bad={1})
    rep = recover_mod._copy(src, dst, "events")
    assert dataclasses.astuple(rep) == ("events", 19, 0, "rows before the first readable one may be lost too; "
                                                          "rows after the last readable one may be lost too")
    assert [r[0] for r in dst.execute("SELECT rowid FROM events ORDER BY rowid")] == list(range(2, 21))


def test_copy_past_an_unreadable_row_below_1_reads_row_1_and_joins_every_note(tmp_path: Path) -> None:
    """Below rowid 1 (no row of opskit's, but a rowid SQLite takes) the first row is unreadable:
    the look from 1 on still reads row 1, and a gap after it is said with the other two notes."""
    src, dst = _pair(tmp_path)
    _fill(src, "events", [-1, *range(1, 11)], bad={-1, 4})
    rep = recover_mod._copy(src, dst, "events")
    assert dataclasses.astuple(rep) == ("events", 9, 1, "ids 1–10 with gaps; rows before the first readable one "
                                                        "may be lost too; rows after the last readable one may be "
                                                        "lost too")
    assert [r[0] for r in dst.execute("SELECT rowid FROM events ORDER BY rowid")] == [1, 2, 3, *range(5, 11)]
