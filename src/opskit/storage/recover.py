"""A damaged journal: find it (SQLite's quick_check) and rebuild it from what is readable.

`opskit journal recover` keeps the damaged file (and its -wal) aside, untouched, copies every
row that can still be read — events, deploys, quarantine, outbox, kv, and any other table
(approvals) with its own schema — into a new journal.db, and says what was lost. It holds
every service's deploy lock while it works, so it refuses while a deploy runs, and no
deploy can start half-way through. Records a failed write kept aside (fallback.py) are
journaled by the first open of the new journal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import statefs
from opskit.base.errors import OpsError
from opskit.base.lock import ServiceLock
from opskit.storage.journal import SCHEMA, add_columns, connect_checked

# The tables opskit's own schema defines, in the order they are copied.
KNOWN = ("events", "deploys", "quarantine", "outbox", "kv")
MAX_SKIP = 1 << 40  # how far past an unreadable stretch of rowids a scan looks for more rows


def quick_check(path: Path) -> list[str]:
    """SQLite's quick_check of the journal: [] when it is sound (or absent), else its findings."""
    if not path.exists():
        return []
    try:
        # Never through a link at its name, checked or swapped in (journal.connect_checked).
        conn = connect_checked(path, path.parent, "ro", timeout=10.0)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)")]
        finally:
            conn.close()
    except FileNotFoundError:
        return []
    except sqlite3.DatabaseError as e:
        return [str(e)]
    return [] if rows == ["ok"] else rows


@dataclass
class TableReport:
    name: str
    recovered: int = 0
    lost: int | None = 0  # None: unknown (the table's rows could not be counted)
    note: str = ""

    def line(self) -> str:
        lost = "an unknown number lost" if self.lost is None else f"{self.lost} lost"
        return f"{self.name}: {self.recovered} recovered, {lost}" + (f" ({self.note})" if self.note else "")


@dataclass
class RecoverReport:
    path: str
    damaged: bool
    problems: list[str]
    kept_aside: list[str] = field(default_factory=list)
    tables: list[TableReport] = field(default_factory=list)
    rebuilt: bool = False

    @property
    def lost_any(self) -> bool:
        return any(t.lost is None or t.lost for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "damaged": self.damaged, "problems": self.problems, "rebuilt": self.rebuilt,
                "kept_aside": self.kept_aside, "lost_any": self.lost_any,
                "tables": [t.__dict__ for t in self.tables]}


def recover(state_dir: Path, services: Iterable[str], *, force: bool = False) -> RecoverReport:
    """Rebuild state_dir/journal.db from what is readable in it; the damaged files are kept aside."""
    path = Path(state_dir) / "journal.db"
    seen = statefs.check_sqlite(path, state_dir)  # SQLite follows a planted link (tests/test_state_links.py): exit 2, the fix
    problems = quick_check(path)
    report = RecoverReport(path=str(path), damaged=bool(problems), problems=problems)
    if not path.exists():
        raise OpsError(f"no journal at {path}: nothing to recover (check [opskit] state_dir)")
    if not problems and not force:
        return report
    with contextlib.ExitStack() as locks:
        for name in services:
            try:
                locks.enter_context(ServiceLock(state_dir, name, wait=0, what="journal recover"))
            except OpsError as e:
                raise OpsError(f"journal recover refused: a deploy of {name} holds its lock ({e.message}); "
                               "run it again when that deploy has finished") from None
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        fresh = path.with_name(f"journal.db.rebuilding-{os.getpid()}")
        _remove(fresh)
        # Made by us, never through a link, and only ever written through this descriptor: SQLite
        # builds the new journal in a private folder outside the state dir (its -journal and -wal
        # there too), its bytes are copied in here; a group member can rename a file over the
        # name, so the name is checked against the descriptor before it is renamed into place.
        fd = statefs.create_exclusive(fresh, state_dir, 0o644)
        try:
            mine = os.fstat(fd)
            report.tables = _rebuild(path, fd, Path(state_dir), seen)
            _keep_shared(fd, fresh, Path(state_dir))
            _still_ours(fresh, mine)
            aside = path.with_name(f"journal.db.damaged-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
                    report.kept_aside.append(f"{aside}{suffix}")
            _still_ours(fresh, mine)
            os.replace(fresh, path)
        finally:
            os.close(fd)
        report.rebuilt = True
    return report


def _still_ours(fresh: Path, mine: os.stat_result) -> None:
    """The name still holds the file this run made (a rename over it is refused, never followed)."""
    dfd = os.open(fresh.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st: os.stat_result | None = os.stat(fresh.name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    finally:
        os.close(dfd)
    if st is None or (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
        raise statefs.Unsafe(fresh, "was replaced by another file while journal recover built it; "
                                    "the damaged journal was left in place")


def _keep_shared(fd: int, fresh: Path, state_dir: Path) -> None:
    """The rebuilt journal is the state dir's, like the one it replaces: its group, and in a shared
    (setgid) state dir group-writable. Root's umask made it 0644 root, and the git account's next
    push failed "attempt to write a readonly database" (tests/test_root_paths.py). Through the
    descriptor create_exclusive gave: what is changed is the file just built, never what a group
    member renamed over its name (that unlinks ours: st_nlink 0, refused)."""
    if not statefs.is_shared(state_dir):
        return  # a personal state dir: left as the umask made it, like every file opskit creates there
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        raise OpsError(f"journal recover: {fresh} is not the file it just built; nothing was replaced")
    gid = os.stat(state_dir).st_gid
    if st.st_gid != gid:
        os.fchown(fd, -1, gid)  # the setgid dir gave it the group already; this is for certain
    want = stat.S_IRGRP | stat.S_IWGRP
    if st.st_mode & want != want:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | want)


def _remove(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _rebuild(damaged: Path, fd: int, state_dir: Path, seen: os.stat_result | None) -> list[TableReport]:
    """Copy what is readable in damaged into a journal built in a root-private temporary folder,
    then its bytes into fd (the new file in the state dir)."""
    work = tempfile.mkdtemp(prefix="opskit-recover-")
    try:
        built = Path(work) / "journal.db"
        reports = _build(damaged, built, state_dir, seen)
        with open(built, "rb") as f:
            while chunk := f.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        os.fsync(fd)
        return reports
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(damaged: Path, built: Path, state_dir: Path, seen: os.stat_result | None) -> list[TableReport]:
    src = connect_checked(damaged, state_dir, "ro", seen=seen, timeout=10.0)
    dst = sqlite3.connect(built, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode = MEMORY")
        dst.executescript(SCHEMA)
        add_columns(dst)  # the columns later releases added (precise times, message buttons)
        tables: dict[str, str | None] = {t: None for t in KNOWN}
        try:
            for name, sql in src.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite_%'"):
                tables.setdefault(name, sql)
        except sqlite3.DatabaseError:
            pass  # the schema page itself is damaged: opskit's own tables are still tried
        reports = []
        for name, sql in tables.items():
            if sql and name not in KNOWN:
                try:
                    dst.execute(sql)
                except sqlite3.DatabaseError:
                    reports.append(TableReport(name, 0, None, "its schema could not be recreated"))
                    continue
            reports.append(_copy(src, dst, name))
        dst.execute("PRAGMA journal_mode = WAL")
    finally:
        src.close()
        dst.close()
    return reports


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> TableReport:
    """Every readable row of one table, by rowid; an unreadable stretch is skipped, not fatal."""
    rep = TableReport(table)
    try:
        want = [r[1] for r in dst.execute(f'PRAGMA table_info("{table}")')]
        have = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    except sqlite3.DatabaseError as e:
        rep.lost, rep.note = None, f"unreadable: {e}"
        return rep
    cols = [c for c in want if c in have] if have else want
    if not cols:
        rep.lost, rep.note = None, "the table could not be read"
        return rep
    names = ", ".join(f'"{c}"' for c in cols)
    insert = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({", ".join("?" * len(cols))})'
    last, skip, bad, first_bad = -(1 << 62), 1, False, False
    ids: list[int] = []
    dst.execute("BEGIN")
    while True:
        try:
            cur = src.execute(f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid', (last,))
            for row in cur:
                dst.execute(insert, row[1:])
                last = int(row[0])
                ids.append(last)
                skip = 1
            break
        except sqlite3.DatabaseError:
            bad = True
            if not ids and last < 0:
                # Nothing read yet: the stepping from -2**62 would give up long before rowid 1,
                # and opskit's rows start there. Look from 1 on instead.
                first_bad, last = True, 0
                continue
            if skip > MAX_SKIP:
                break
            last += skip  # past the unreadable stretch, further each time it stays unreadable
            skip *= 2
    dst.execute("COMMIT")
    rep.recovered = len(ids)
    if table in ("events", "deploys", "outbox") and ids:
        # AUTOINCREMENT ids are handed out one by one: the gaps are rows that were lost.
        rep.lost = ids[-1] - ids[0] + 1 - len(ids)
        if rep.lost:
            rep.note = f"ids {ids[0]}–{ids[-1]} with gaps"
        if first_bad:
            rep.note = (rep.note + "; " if rep.note else "") + "rows before the first readable one may be lost too"
        if bad:
            rep.note = (rep.note + "; " if rep.note else "") + "rows after the last readable one may be lost too"
    elif bad:
        rep.lost, rep.note = None, "part of the table was unreadable"
    return rep
