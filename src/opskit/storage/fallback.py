"""When the journal cannot be written: keep the record aside, say why, journal it later once.

The journal is not allowed to be the single point of failure of the immune system: a full
disk, an I/O error or a corrupt journal.db during a gate must not stop the revert. A write
that fails is kept as one JSON line in a small fallback log outside the database — in the
state dir, or, when that disk is the full one, in the temp dir; on stderr when even that
fails — and the caller goes on. The next journal that opens with room to write replays the
fallback log into the database, each record exactly once (its id is marked in the same
transaction), then empties it.

Disk full and corruption are named as such, with the path and the fix, in every message.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opskit.base import statefs
from opskit.base.errors import OpsError, redact

NAME = "journal-fallback.jsonl"
SCOPE = "fallback"  # kv scope: ids of replayed records (exactly once)
MAX_BYTES = 4 * 1024 * 1024  # a fallback log is for a bad hour, not a second journal


class JournalWriteError(OpsError):
    """A journal write failed; the message names the cause (disk full, corrupt, I/O), the path and the fix."""


def kind_of(e: BaseException) -> str:
    """full | corrupt | io | other, from an sqlite3 or OS error."""
    text = str(e).lower()
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "full" in text:
        return "full"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return "corrupt"
    if "i/o" in text or isinstance(e, OSError):
        return "io"
    return "other"


def describe(path: Path, e: BaseException) -> str:
    """One line: what is wrong with the journal at path, and how to fix it."""
    where = path.parent
    kind = kind_of(e)
    if kind == "full":
        return (f"disk full: cannot write the journal {path} ({e}); free space on the state dir's "
                f"filesystem (`df -h {where}`); opskit journals what it kept aside once there is room")
    if kind == "corrupt":
        return (f"database corrupt: the journal {path} is damaged ({e}); run `opskit journal recover` "
                "(it keeps the damaged file aside and rebuilds from what is readable)")
    if kind == "io":
        return (f"disk I/O error on the journal {path} ({e}): the disk may be full or failing; check "
                f"`df -h {where}` and `dmesg`, then `opskit doctor`")
    return f"the journal {path} cannot be written ({type(e).__name__}: {e}); check `opskit doctor`"


def journal_problem(e: BaseException, state_dir: Path) -> str | None:
    """describe() for an error that came from the journal; None for any other error."""
    if isinstance(e, sqlite3.DatabaseError):
        return describe(Path(state_dir) / "journal.db", e)
    return None


def locations(state_dir: Path) -> list[Path]:
    """Where fallback records go, in order: the state dir, then the temp dir (another disk,
    usually), named after the state dir and our uid so two installs never mix."""
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return [Path(state_dir) / NAME, Path(tempfile.gettempdir()) / f"opskit-{os.getuid()}-{tag}-{NAME}"]


def _open(path: Path, state_dir: Path, flags: int) -> int:
    """The state dir's file by statefs' rule (no link, one link, the group's: tests/test_state_links.py — a
    planted link made root append to and truncate its target), shared like the journal beside
    it; the temp dir's with O_NOFOLLOW, checked by _trusted. Unsafe is an OSError here: the
    next location takes the record, and it is said once on stderr."""
    if path.parent == Path(state_dir):
        try:
            return statefs.open_file(path, state_dir, flags, 0o660)
        except statefs.Unsafe as e:
            if ("unsafe", str(path)) not in _WARNED:
                _WARNED.add(("unsafe", str(path)))
                _warn(f"opskit: {e}")
            raise OSError(f"{path}: refused") from None
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)


def _trusted(fd: int, path: Path, state_dir: Path) -> bool:
    """The state dir's own file is trusted like the journal beside it (_open checked it); the
    one in the shared temp dir only when it is ours, a plain single-link file, and nobody else
    can write it (its name is predictable)."""
    if path.parent == Path(state_dir):
        return True
    st = os.fstat(fd)
    return (st.st_uid == os.geteuid() and not st.st_mode & 0o022 and stat.S_ISREG(st.st_mode)
            and st.st_nlink == 1)


def keep(state_dir: Path, record: dict[str, Any], error: BaseException, db: Path) -> str:
    """Write one record aside; returns where it went. Warns on stderr once per process and cause."""
    record = {"id": uuid.uuid4().hex, **record}
    line = (redact(json.dumps(record, default=str, ensure_ascii=False)) + "\n").encode("utf-8", "replace")
    where = "stderr"
    for path in locations(state_dir):
        try:
            fd = _open(path, state_dir, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError:
            continue
        try:
            if not _trusted(fd, path, state_dir):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size + len(line) > MAX_BYTES:
                continue
            os.write(fd, line)
            where = str(path)
            break
        except OSError:
            continue
        finally:
            os.close(fd)
    why = describe(db, error)
    if where == "stderr":
        _warn(f"opskit: {why}; NOT journaled, recorded here: {line.decode('utf-8', 'replace').rstrip()}")
    elif (why.split(":")[0], where) not in _WARNED:
        _WARNED.add((why.split(":")[0], where))
        _warn(f"opskit: {why}; what could not be journaled is kept in {where}")
    return where


_WARNED: set[tuple[str, str]] = set()


def _warn(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def warn_read(db: Path, error: BaseException) -> None:
    """A read that failed and was done without: said once per process and cause."""
    why = describe(db, error)
    if (why.split(":")[0], "read") not in _WARNED:
        _WARNED.add((why.split(":")[0], "read"))
        _warn(f"opskit: {why}; going on without what it holds (the last known-good commit, "
              "the quarantine list): git has the facts")


def kept_value(state_dir: Path, scope: str, key: str) -> Any:
    """The newest kv value for (scope, key) still waiting aside, or None: a freeze written while
    the journal was full is in force before it is replayed."""
    found: Any = None
    for path in locations(state_dir):
        try:
            fd = _open(path, state_dir, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _trusted(fd, path, state_dir):
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                for raw in f:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and rec.get("kind") == "kv" and rec.get("scope") == scope \
                            and rec.get("key") == key:
                        found = json.loads(rec["value"]) if isinstance(rec.get("value"), str) else rec.get("value")
        except OSError:
            continue
        finally:
            os.close(fd)
    return found


def pending(state_dir: Path) -> int:
    """How many records wait to be journaled."""
    n = 0
    for path in locations(state_dir):
        try:
            with os.fdopen(_open(path, state_dir, os.O_RDONLY), "rb") as f:
                n += sum(1 for ln in f if ln.strip())
        except OSError:
            pass
    return n


def replay(state_dir: Path, conn: sqlite3.Connection,
           apply: Callable[[sqlite3.Connection, dict[str, Any]], None]) -> int:
    """Journal the records kept aside, each exactly once; returns how many were applied.

    Under the fallback file's lock (writers append under it too): every record is applied
    in its own transaction together with the mark of its id, then the file is emptied. A
    record that cannot be applied (the disk is still full) stops the replay; it stays."""
    applied = 0
    for path in locations(state_dir):
        try:
            fd = _open(path, state_dir, os.O_RDWR)
        except OSError:
            continue
        try:
            if not _trusted(fd, path, state_dir):
                continue  # planted by someone else: never journal (as root!) what they wrote
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as f:
                lines = f.read().splitlines()
            for raw in lines:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # a torn last line from a writer that died: nothing to journal
                if not isinstance(rec, dict) or "id" not in rec:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    seen = conn.execute("SELECT 1 FROM kv WHERE scope = ? AND key = ?",
                                        (SCOPE, rec["id"])).fetchone()
                    if not seen:
                        apply(conn, rec)
                        conn.execute("INSERT INTO kv (scope, key, value, updated) VALUES (?, ?, ?, ?)",
                                     (SCOPE, rec["id"], json.dumps({"kind": rec.get("kind")}),
                                      rec.get("ts") or ""))
                        applied += 1
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            os.ftruncate(fd, 0)  # not unlinked: a writer may hold it open, waiting for the lock
        finally:
            os.close(fd)
    return applied
