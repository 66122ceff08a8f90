"""SQLite opens the journal by name and follows links, so a check before it is not enough: a
group member swaps a link in between (renameat2 RENAME_EXCHANGE in a loop). Here the swap is
made deterministic: sqlite3.connect is wrapped so it happens exactly between opskit's check and
SQLite's open. Root never creates a link's target, never writes another database, and journal
recover never chowns, chmods or renames in a file renamed over its rebuilding name (statefs)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opskit.base import statefs
from opskit.base.errors import OpsError, UsageError
from opskit.storage import recover as recover_mod
from opskit.storage.journal import Journal

SECRET = b"root's secret: never chowned, never chmodded\n"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o2770)
    return d


def _swap_on_connect(monkeypatch: pytest.MonkeyPatch, db: Path, target: Path) -> list[str]:
    """The first sqlite3.connect finds db replaced by a link to target (the real one moved aside)."""
    real = sqlite3.connect
    done: list[str] = []

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        if not done:
            done.append(str(args[0]))
            os.rename(db, db.with_name(db.name + ".moved"))
            os.symlink(target, db)
        conn: sqlite3.Connection = real(*args, **kw)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return done


def _private_db(where: Path) -> tuple[Path, bytes]:
    where.mkdir(mode=0o700, exist_ok=True)
    other = where / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE secret (v TEXT)")
    c.execute("INSERT INTO secret VALUES ('root only')")
    c.commit()
    c.close()
    os.chmod(other, 0o600)
    return other, other.read_bytes()


def test_a_link_swapped_in_after_the_check_never_creates_its_target(shared: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    Journal(shared).close()
    victim = tmp_path / "rootonly" / "made-through-a-link"
    victim.parent.mkdir(mode=0o700)
    done = _swap_on_connect(monkeypatch, shared / "journal.db", victim)
    with pytest.raises(statefs.Unsafe) as e:
        Journal(shared)
    assert done and not victim.exists()
    assert "journal.db" in str(e.value) and "\n" not in str(e.value)


def test_a_link_to_another_database_swapped_in_leaves_it_byte_for_byte(shared: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    Journal(shared).close()
    other, before = _private_db(tmp_path / "rootonly")
    done = _swap_on_connect(monkeypatch, shared / "journal.db", other)
    with pytest.raises(statefs.Unsafe, match="journal.db: was replaced"):
        Journal(shared)
    assert done and other.read_bytes() == before
    assert not Path(f"{other}-wal").exists() and not Path(f"{other}-shm").exists()


def test_the_journal_still_opens_from_many_threads_and_a_new_state_dir(shared: Path) -> None:
    j = Journal(shared)  # the creation path: made by opskit, then opened by SQLite
    j.append("t.first")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                j.append("t.thread")
            j.close()
        except BaseException as e:  # pragma: no cover - the failure is the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(j.query(type_prefix="t.")) == 81


def test_recover_never_reads_a_database_swapped_in_after_the_check(shared: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(shared)
    j.append("t.one")
    j.close()
    other, before = _private_db(tmp_path / "rootonly")
    done = _swap_on_connect(monkeypatch, shared / "journal.db", other)
    with pytest.raises(statefs.Unsafe):
        recover_mod.recover(shared, [], force=True)
    assert done and other.read_bytes() == before
    for p in shared.iterdir():
        if p.is_file() and not p.is_symlink() and p.read_bytes().startswith(b"SQLite format 3"):
            c = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
            finally:
                c.close()
            assert "secret" not in names, p  # root's private rows never copied into the group's journal


def test_a_file_renamed_over_the_rebuilding_name_is_never_chowned_chmodded_or_installed(
        shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(shared)
    j.append("t.one")
    j.close()
    fresh = shared / f"journal.db.rebuilding-{os.getpid()}"
    planted: list[int] = []
    real: Callable[..., Any] = recover_mod._rebuild

    def rebuild(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        key = shared / "decision.key"  # root's single-link secret, renamed over the name by a member
        key.write_bytes(SECRET)
        os.chmod(key, 0o600)
        os.chown(key, 0, 0)
        planted.append(os.stat(key).st_ino)
        os.rename(key, fresh)
        return out

    monkeypatch.setattr(recover_mod, "_rebuild", rebuild)
    with pytest.raises((OpsError, UsageError)):
        recover_mod.recover(shared, [], force=True)
    assert planted
    found = [p for p in shared.iterdir() if os.lstat(p).st_ino == planted[0]]
    assert len(found) == 1 and found[0] == fresh, found  # not renamed to journal.db
    st = os.stat(found[0])
    assert found[0].read_bytes() == SECRET
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), oct(st.st_mode)
    assert (shared / "journal.db").read_bytes().startswith(b"SQLite format 3")  # the journal left in place


def test_a_folder_at_a_files_name_is_the_one_line_exit_2(shared: Path) -> None:
    (shared / "logs" / "x.log").mkdir(parents=True)
    for flags in (os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(statefs.Unsafe, match="x.log: is not a regular file") as e:
            statefs.open_file(shared / "logs" / "x.log", shared, flags)
        assert "\n" not in str(e.value)
