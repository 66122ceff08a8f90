"""base/statefs.py, each function in this process: what it makes, what it refuses and what it says.

tests/test_state_links.py plants links where root's commands open files in the state dir; these
pin the rule's parts one by one (the exact mode and owner of what is created, the exact refusal,
what happens when a name comes and goes between two opens, what is left alone), with real files,
a real second account (tests/support/accounts.py) that owns files or runs the call itself
(base/accounts.py as_account), and a uid no account has. The races are forced by a hook on
os.open/os.mkdir that plays the other account's part at the exact moment, never by timing.
Needs root (chown, a second account); skipped otherwise.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from opskit.base import accounts, statefs
from opskit.base.errors import UsageError
from tests.support.accounts import throwaway_account

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files are chowned to another "
                                "account and calls run as that account")

NOBODY = 54321  # a uid and gid no account or group has
REAL_OPEN = os.open  # the hooks below replace os.open; the other account's own opens are real


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _line(path: Path | str, why: str) -> str:
    """Unsafe's whole line for path."""
    return (f"{path}: {why}; opskit does not follow links or open files the state dir's group could not; "
            f"if nothing of yours is there, remove it: rm {shlex.quote(str(path))}")


def _refused(call: Callable[[], object], path: Path | str, why: str) -> None:
    with pytest.raises(statefs.Unsafe) as e:
        call()
    assert (e.value.path, str(e.value)) == (str(path), _line(path, why))


@pytest.fixture(scope="module")
def other() -> Iterator[pwd.struct_passwd]:
    with throwaway_account("opsksf") as pw:
        yield pw


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder another account can reach (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="opskit-statefs-test-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared(base: Path) -> Path:
    d = base / "state"
    d.mkdir()
    os.chmod(d, 0o2770)
    return d


@pytest.fixture
def personal(base: Path) -> Path:
    d = base / "personal"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def _file(p: Path, data: bytes = b"", mode: int = 0o600, uid: int = -1, gid: int = -1) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    os.chown(p, uid, gid)
    return p


# --- where a path is, and whether the dir is shared --------------------------------------------

def test_is_shared_is_the_setgid_bit_of_a_dir_that_exists(shared: Path, personal: Path) -> None:
    assert statefs.is_shared(shared) is True
    assert statefs.is_shared(personal) is False
    assert statefs.is_shared(personal / "missing") is False


def test_parts_are_the_names_below_the_state_dir_and_nothing_outside_it(shared: Path, base: Path) -> None:
    assert statefs._parts(shared / "a" / "b.lock", shared) == ["a", "b.lock"]
    assert statefs._parts(f"{shared}/a/./b.lock", shared) == ["a", "b.lock"]
    for outside in (base / "elsewhere", shared, shared / ".." / "x"):
        with pytest.raises(ValueError) as e:
            statefs._parts(outside, shared)
        assert str(e.value) == f"{outside} is not inside the state dir {shared}"


# --- open_file: what it creates -----------------------------------------------------------------

def test_created_folders_and_files_get_exact_modes_whatever_the_umask(shared: Path, personal: Path) -> None:
    """A folder made in a personal dir is 0750 less the umask; in a shared one 2770 (the group's,
    setgid) whatever the umask. A file: the umask stands in a personal dir; a shared dir adds
    the group's rw."""
    with _umask(0):
        os.close(statefs.open_file(personal / "a" / "b" / "f", personal, os.O_RDWR | os.O_CREAT))
        assert [_mode(personal / "a"), _mode(personal / "a" / "b"), _mode(personal / "a" / "b" / "f")] == [
            0o750, 0o750, 0o660]
        os.close(statefs.open_file(shared / "a" / "b" / "f", shared, os.O_RDWR | os.O_CREAT))
        assert [_mode(shared / "a"), _mode(shared / "a" / "b"), _mode(shared / "a" / "b" / "f")] == [
            0o2770, 0o2770, 0o660]
    with _umask(0o022):
        os.close(statefs.open_file(personal / "g", personal, os.O_WRONLY | os.O_CREAT))
        os.close(statefs.open_file(personal / "h", personal, os.O_WRONLY | os.O_CREAT, 0o664))
        assert (_mode(personal / "g"), _mode(personal / "h")) == (0o640, 0o644)
    with _umask(0o077):
        os.close(statefs.open_file(shared / "c" / "f", shared, os.O_WRONLY | os.O_CREAT, 0o640))
        assert (_mode(shared / "c"), _mode(shared / "c" / "f")) == (0o2770, 0o660)
        assert os.stat(shared / "c" / "f").st_gid == os.stat(shared).st_gid


def test_a_folder_that_was_there_is_never_chmodded(shared: Path) -> None:
    (shared / "mine").mkdir()
    os.chmod(shared / "mine", 0o700)
    os.close(statefs.open_file(shared / "mine" / "f", shared, os.O_RDWR | os.O_CREAT))
    assert _mode(shared / "mine") == 0o700


def test_without_o_creat_nothing_is_made(shared: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        statefs.open_file(shared / "absent.lock", shared, os.O_RDONLY)
    assert (e.value.errno, e.value.strerror) == (2, "No such file or directory")
    with pytest.raises(FileNotFoundError):
        statefs.open_file(shared / "nodir" / "absent.lock", shared, os.O_RDWR)
    assert sorted(os.listdir(shared)) == []


def test_create_exclusive_gives_exactly_its_mode_and_never_opens_what_is_there(shared: Path,
                                                                            personal: Path) -> None:
    with _umask(0):
        os.close(statefs.create_exclusive(shared / "decision.key", shared))
        os.close(statefs.create_exclusive(personal / "crash.log", personal))
    with _umask(0o077):
        os.close(statefs.create_exclusive(shared / "crash-1.log", shared, 0o640))
    assert [_mode(shared / "decision.key"), _mode(personal / "crash.log"), _mode(shared / "crash-1.log")] == [
        0o600, 0o600, 0o640]
    with pytest.raises(FileExistsError):
        statefs.create_exclusive(shared / "decision.key", shared)


# --- open_file: an existing file ----------------------------------------------------------------

def test_existing_file_is_truncated_only_with_o_trunc_and_appended_to_with_o_append(shared: Path) -> None:
    f = _file(shared / "logs" / "cron.log", b"old\n", 0o660)
    os.close(statefs.open_file(f, shared, os.O_RDWR | os.O_CREAT))
    assert f.read_bytes() == b"old\n"
    fd = statefs.open_file(f, shared, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert fl & os.O_APPEND and not fl & os.O_NONBLOCK  # O_NONBLOCK only while opening
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"new\n")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"old\nnew\n"
    os.close(statefs.open_file(f, shared, os.O_WRONLY | os.O_TRUNC))
    assert (f.read_bytes(), _mode(f)) == (b"", 0o660)


def test_a_file_only_flocked_needs_no_group_bits(shared: Path) -> None:
    f = _file(shared / "inbox.lock", b"", 0o600)
    os.close(statefs.open_file(f, shared, os.O_RDONLY, flock_only=True))
    _refused(lambda: statefs.open_file(f, shared, os.O_RDONLY), f,
             "is not readable by group root (mode 0600), so it is not a file opskit shares there")
    assert _mode(f) == 0o600


def test_open_file_works_with_stdin_closed(shared: Path) -> None:
    """cron or a daemon may start opskit with descriptor 0 closed: the file can get it."""
    (shared / "locks").mkdir()
    saved = os.dup(0)
    os.close(0)
    try:
        fd = statefs.open_file(shared / "locks" / "app.lock", shared, os.O_RDWR | os.O_CREAT)
        assert fd == 0
        assert os.fstat(fd).st_ino == os.stat(shared / "locks" / "app.lock").st_ino
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def _hook_open(monkeypatch: pytest.MonkeyPatch, name: str,
               before: Callable[[int, int], None]) -> list[int]:
    """os.open of `name` relative to a folder runs before(flags, dir_fd) first: the other
    account's move at that exact moment. Returns the flags of each such call."""
    calls: list[int] = []

    def hooked(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == name and dir_fd is not None:
            calls.append(flags)
            before(flags, dir_fd)
        return REAL_OPEN(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(statefs.os, "open", hooked)
    return calls


def test_a_name_removed_between_the_two_opens_is_created_as_ours(shared: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is there at the O_EXCL open and gone at the plain one: look again, create it
    (O_EXCL), and it is ours, shared."""
    f = _file(shared / "app.lock", b"theirs", 0o660)
    state = {"removed": False}

    def remove_after_the_excl_open(flags: int, dfd: int) -> None:
        if not flags & os.O_EXCL and not state["removed"]:
            os.unlink("app.lock", dir_fd=dfd)
            state["removed"] = True

    calls = _hook_open(monkeypatch, "app.lock", remove_after_the_excl_open)
    with _umask(0o022):
        fd = statefs.open_file(f, shared, os.O_RDWR | os.O_CREAT)
    monkeypatch.undo()
    os.close(fd)
    assert (f.read_bytes(), _mode(f)) == (b"", 0o660)
    want = os.O_CREAT | os.O_EXCL
    assert [c & want for c in calls] == [want, 0, want]


def test_a_name_that_comes_and_goes_five_times_is_given_up(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = shared / "app.lock"

    def flip(flags: int, dfd: int) -> None:
        if flags & os.O_EXCL:  # made just before our O_EXCL open, removed before the plain one
            os.close(REAL_OPEN("app.lock", os.O_WRONLY | os.O_CREAT, 0o660, dir_fd=dfd))
        else:
            os.unlink("app.lock", dir_fd=dfd)

    calls = _hook_open(monkeypatch, "app.lock", flip)
    with pytest.raises(FileNotFoundError) as e:
        statefs.open_file(f, shared, os.O_RDWR | os.O_CREAT)
    monkeypatch.undo()
    assert (e.value.errno, e.value.strerror, e.value.filename) == (2, "appeared and vanished", str(f))
    assert [bool(c & os.O_EXCL) for c in calls] == [True, False] * 5
    assert not f.exists()


def test_a_link_planted_between_the_folders_open_and_its_mkdir_is_refused(
        shared: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """logs/ is missing at our open, a member plants logs -> elsewhere before our mkdir: the
    mkdir fails (it exists), and the open after it refuses the link."""
    (base / "elsewhere").mkdir()
    real = os.mkdir

    def plant_first(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if path == "logs" and dir_fd is not None:
            os.symlink(base / "elsewhere", "logs", dir_fd=dir_fd)
        real(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(statefs.os, "mkdir", plant_first)
    _refused(lambda: statefs.open_file(shared / "logs" / "cron.log", shared, os.O_WRONLY | os.O_CREAT),
             shared / "logs", "is a link or not a folder")
    monkeypatch.undo()
    assert os.listdir(base / "elsewhere") == []


def test_a_state_dir_that_is_a_file_is_an_os_error_not_a_refusal(base: Path) -> None:
    f = _file(base / "state", b"", 0o600)
    with pytest.raises(NotADirectoryError):
        statefs.open_file(f / "locks" / "app.lock", f, os.O_RDONLY)


# --- the journal's three names ------------------------------------------------------------------

def test_check_sqlite_looks_in_the_journals_own_folder_and_makes_none(shared: Path) -> None:
    db = _file(shared / "sub" / "journal.db", b"", 0o644)
    got = statefs.check_sqlite(db, shared)
    assert got is not None and got.st_ino == os.lstat(db).st_ino
    assert statefs.check_sqlite(shared / "missing" / "journal.db", shared) is None
    assert not (shared / "missing").exists()
    os.symlink(shared / "nowhere", f"{db}-wal")
    _refused(lambda: statefs.check_sqlite(db, shared), f"{db}-wal", "is a symbolic link")


def test_open_files_sees_every_descriptor_past_a_gap(shared: Path) -> None:
    a = os.open(_file(shared / "a"), os.O_RDONLY)
    b = os.open(_file(shared / "b"), os.O_RDONLY)
    r, w = os.pipe()
    os.close(a)  # listdir's own descriptor takes this gap, and is closed when it is looked at
    try:
        got = statefs.open_files()
        st = os.fstat(b)
        assert got[b] == (st.st_dev, st.st_ino)
        assert r not in got and w not in got  # only regular files
    finally:
        for fd in (b, r, w):
            os.close(fd)


def test_check_opened_wants_the_checked_file_among_the_new_descriptors(shared: Path) -> None:
    db = _file(shared / "journal.db", b"", 0o660)
    other = _file(shared / "other.db", b"", 0o660)
    seen = os.lstat(db)
    held = os.open(db, os.O_RDONLY)  # this process already has the journal open
    try:
        before = statefs.open_files()
        fd = os.open(other, os.O_RDONLY)  # SQLite opened another file
        try:
            _refused(lambda: statefs.check_opened(before, seen, db), db,
                     "was replaced by another file while SQLite opened it (a link swapped in)")
        finally:
            os.close(fd)
        fd = os.open(db, os.O_RDONLY)
        try:
            statefs.check_opened(before, seen, db)
        finally:
            os.close(fd)
        statefs.check_opened(before, seen, db)  # nothing new: SQLite took back the one it kept
    finally:
        os.close(held)
    _refused(lambda: statefs.check_opened(statefs.open_files(), seen, db), db,
             "was replaced by another file while SQLite opened it (a link swapped in)")


# --- share and share_fd -------------------------------------------------------------------------

def test_share_opens_up_only_an_empty_file_or_a_folder_of_ours(shared: Path, personal: Path, base: Path,
                                                               other: pwd.struct_passwd,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (base / "cwd").mkdir()
    monkeypatch.chdir(base / "cwd")  # a name is never looked up from the cwd
    ours = [_file(shared / "empty"), _file(shared / "sub" / "empty")]
    (shared / "d").mkdir()
    os.chmod(shared / "d", 0o700)
    left = {
        _file(shared / "full", b"x"): 0o600,
        _file(shared / "one-byte", b"\0"): 0o600,
        _file(shared / "hard"): 0o600,
        _file(shared / "theirs", uid=other.pw_uid): 0o600,
        _file(base / "target"): 0o600,
        _file(personal / "empty"): 0o600,
    }
    os.link(shared / "hard", base / "second-name")
    os.symlink(base / "target", shared / "link")
    with _umask(0o022):
        for p in [*ours, shared / "d", *left, shared / "link", shared / "nodir" / "x"]:
            statefs.share(p, personal if p.parent == personal else shared)
    assert [_mode(p) for p in ours] == [0o660, 0o660]
    assert _mode(shared / "d") == 0o2770
    assert {p: _mode(p) for p in left} == left
    assert not (shared / "nodir").exists()


def test_share_fd_opens_up_only_an_empty_single_link_file_of_ours(shared: Path, personal: Path, base: Path,
                                                                  other: pwd.struct_passwd) -> None:
    ours = _file(shared / "empty")
    left = [_file(shared / "full", b"x"), _file(shared / "one-byte", b"\0"), _file(shared / "hard"),
            _file(shared / "theirs", uid=other.pw_uid)]
    os.link(shared / "hard", base / "second-name")
    os.mkfifo(shared / "fifo", 0o600)
    fds = {p: os.open(p, os.O_RDWR | os.O_NONBLOCK) for p in [ours, *left, shared / "fifo"]}
    mine = os.open(_file(personal / "empty"), os.O_RDWR)
    try:
        for fd in fds.values():
            statefs.share_fd(fd, shared)
        statefs.share_fd(mine, personal)
    finally:
        for fd in [*fds.values(), mine]:
            os.close(fd)
    statefs.share_fd(fd, shared)  # a closed descriptor: nothing to do, no error
    assert _mode(ours) == 0o660
    assert [_mode(p) for p in [*left, shared / "fifo", personal / "empty"]] == [0o600] * 6


# --- mkdir, append_bytes, redirect_output -------------------------------------------------------

def test_mkdir_makes_every_missing_folder_shared_and_leaves_outside_paths_to_pathlib(base: Path,
                                                                                    shared: Path) -> None:
    with _umask(0o022):
        statefs.mkdir(shared / "logs" / "old", shared)
        statefs.mkdir(shared / "logs" / "old", shared)
        assert (_mode(shared / "logs"), _mode(shared / "logs" / "old")) == (0o2770, 0o2770)
        fresh = base / "new" / "state"  # the state dir itself is missing, and its parent too
        statefs.mkdir(fresh / "logs" / "x", fresh)
        assert (fresh / "logs" / "x").is_dir() and _mode(fresh / "logs") == 0o750
        outside = base / "elsewhere" / "a" / "b"
        statefs.mkdir(outside, shared)
        statefs.mkdir(outside, shared)
        assert outside.is_dir()


def test_append_bytes_adds_to_a_shared_file_and_never_through_a_link(shared: Path, base: Path) -> None:
    log = shared / "logs" / "push-app-1.log"
    with _umask(0o022):
        statefs.append_bytes(log, shared, b"one\n")
        statefs.append_bytes(log, shared, b"two\n")
    assert (log.read_bytes(), _mode(log), _mode(log.parent)) == (b"one\ntwo\n", 0o660, 0o2770)
    victim = _file(base / "victim", b"secret", 0o600)
    os.symlink(victim, shared / "logs" / "link.log")
    _refused(lambda: statefs.append_bytes(shared / "logs" / "link.log", shared, b"x"),
             shared / "logs" / "link.log", "is a symbolic link")
    assert (victim.read_bytes(), _mode(victim)) == (b"secret", 0o600)


def test_redirect_output_refuses_a_bad_log_and_sends_stdout_stderr_and_children_to_a_good_one(
        shared: Path, base: Path) -> None:
    """A log outside the state dir or a link: refused before anything is rewired. A good log, in
    a forked child (it rewires descriptors 1 and 2): what was written before goes where it was
    going; after, this process's and its children's output is appended to the log. (The calls
    in this process also tell mutmut that this test reaches redirect_output.)"""
    with pytest.raises(UsageError) as e:
        statefs.redirect_output(base / "cron.log", shared)
    assert str(e.value) == (f"--log {base}/cron.log: not inside the state dir {shared}; "
                            "rerun `opskit cron install`")
    os.symlink(base / "nowhere", shared / "link.log")
    _refused(lambda: statefs.redirect_output(shared / "link.log", shared), shared / "link.log",
             "is a symbolic link")
    assert not (base / "nowhere").exists()
    log = _file(shared / "logs" / "cron.log", b"earlier\n", 0o660)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.close(w)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's own streams
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            sys.stdout.write("before-out ")  # buffered: must be flushed to the pipe, not the log
            sys.stderr.write("before-err")
            statefs.redirect_output(log, shared)
            sys.stdout.write("after\n")
            sys.stdout.flush()
            os.write(2, b"err\n")
            subprocess.run(["sh", "-c", "echo child; echo child-err >&2"], check=True)
            code = 0
        except BaseException as e:  # noqa: BLE001 - said in the log for the parent's assert
            os.write(os.open(log, os.O_WRONLY | os.O_APPEND), f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        before = f.read()
    _, status = os.waitpid(pid, 0)
    assert (os.waitstatus_to_exitcode(status), before, log.read_bytes()) == (
        0, b"before-out before-err", b"earlier\nafter\nerr\nchild\nchild-err\n")


# --- as another account: not_writable, denied, open_private -------------------------------------

def test_not_writable_is_none_for_a_dir_the_account_can_write_or_create(base: Path,
                                                                       other: pwd.struct_passwd) -> None:
    own = base / "own"
    own.mkdir()
    os.chown(own, other.pw_uid, other.pw_gid)
    rootonly = base / "rootonly"
    rootonly.mkdir(mode=0o755)
    os.chmod(rootonly, 0o755)
    assert statefs.not_writable(rootonly / "state") is None  # root writes anywhere
    assert accounts.as_account(other, statefs.not_writable, str(own)) is None
    assert accounts.as_account(other, statefs.not_writable, str(own / "state" / "deeper")) is None
    fix = "only root can); run opskit as root (sudo opskit …), or give it to opskit's group: chgrp GROUP"
    assert accounts.as_account(other, statefs.not_writable, str(rootonly)) == (
        f"state dir {rootonly}: account {other.pw_name} cannot write it ({rootonly} is root:root 0755: "
        f"{fix} {rootonly} && chmod g+rwX {rootonly}")
    assert accounts.as_account(other, statefs.not_writable, str(rootonly / "state" / "deeper")) == (
        f"state dir {rootonly}/state/deeper: account {other.pw_name} cannot write it ({rootonly} is "
        f"root:root 0755: {fix} {rootonly} && chmod g+rwX {rootonly}")


def test_denied_names_who_cannot_and_the_fix_that_is_true(base: Path, other: pwd.struct_passwd) -> None:
    acc, group = other.pw_name, grp.getgrgid(other.pw_gid).gr_name
    assert other.pw_gid != 0

    def said(mode: int, verb: str, uid: int = 0, gid: int = 0, folder: bool = False) -> str:
        p = base / ("d" if folder else "f")
        if folder:
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(b"")
        os.chown(p, uid, gid)
        os.chmod(p, mode)
        return statefs.denied(p, "config", verb)

    f, d = base / "f", base / "d"

    def join(p: Path, who: str, mode: str, verb: str = "read") -> str:
        return (f"config: account root cannot {verb} it ({p} is {who} {mode}: it belongs to group {group}); "
                f"add the account to the group: usermod -aG {group} root (then log in again)")

    def only(p: Path, who: str, mode: str, owner: str = "root", verb: str = "read", bits: str = "g+rX") -> str:
        sudo = "sudo opskit …" if owner == "root" else f"sudo -u {owner} opskit …"
        return (f"config: account root cannot {verb} it ({p} is {who} {mode}: only {owner} can); run opskit as "
                f"{owner} ({sudo}), or give it to opskit's group: chgrp GROUP {p} && chmod {bits} {p}")

    assert statefs.denied(base / "missing", "config", "read") == (
        f"config: account root cannot read it ({base}/missing is out of its reach); "
        "run opskit as root (sudo opskit …) or ask an admin to give the account access")
    assert said(0o640, "read") == only(f, "root:root", "0640")  # the root group: joining it is no fix
    assert said(0o640, "read", gid=other.pw_gid) == join(f, f"root:{group}", "0640")
    assert said(0o600, "read", gid=other.pw_gid) == only(f, f"root:{group}", "0600")
    assert said(0o620, "write", other.pw_uid, other.pw_gid) == join(f, f"{acc}:{group}", "0620", "write")
    assert said(0o640, "write", other.pw_uid, other.pw_gid) == only(
        f, f"{acc}:{group}", "0640", acc, "write", "g+rwX")
    assert said(0o760, "write", gid=other.pw_gid, folder=True) == only(
        d, f"root:{group}", "0760", verb="write", bits="g+rwX")  # a folder needs x too
    assert said(0o730, "write", gid=other.pw_gid, folder=True) == join(d, f"root:{group}", "0730", "write")
    assert said(0o740, "read", gid=other.pw_gid, folder=True) == only(d, f"root:{group}", "0740")
    assert said(0o750, "read", gid=other.pw_gid, folder=True) == join(d, f"root:{group}", "0750")
    assert said(0o750, "enter", gid=other.pw_gid) == only(f, f"root:{group}", "0750", verb="enter")
    assert said(0o770, "enter", gid=other.pw_gid) == join(f, f"root:{group}", "0770", "enter")
    assert said(0o600, "read", NOBODY, NOBODY) == only(f, f"{NOBODY}:{NOBODY}", "0600", str(NOBODY))
    nameless = pwd.struct_passwd(("", "x", NOBODY, NOBODY, "", "/", "/bin/sh"))  # a uid without an account
    os.chmod(f, 0o644)
    assert accounts.as_account(nameless, statefs.denied, str(f), "config", "write") == (
        f"config: account {NOBODY} cannot write it ({f} is {NOBODY}:{NOBODY} 0644: only {NOBODY} can); run "
        f"opskit as {NOBODY} (sudo -u {NOBODY} opskit …), or give it to opskit's group: chgrp GROUP {f} && "
        f"chmod g+rwX {f}")


def test_open_private_opens_only_a_key_nobody_else_can_write(shared: Path, base: Path,
                                                             other: pwd.struct_passwd) -> None:
    key = _file(shared / "keys" / "decision.key", b"key", 0o600)
    fd = statefs.open_private(key, shared)
    try:
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert (os.read(fd, 10), fl & os.O_ACCMODE, fl & os.O_NONBLOCK) == (b"key", os.O_RDONLY, 0)
    finally:
        os.close(fd)
    fd = statefs.open_private(key, shared, os.O_RDWR | os.O_CREAT | os.O_TRUNC)  # only ever opens
    try:
        os.write(fd, b"K")
    finally:
        os.close(fd)
    assert key.read_bytes() == b"Key"
    top = _file(shared / "decision.key", b"top", 0o600)  # where the key is: right in the state dir
    fd = statefs.open_private(top, shared, os.O_WRONLY | os.O_APPEND)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_APPEND | os.O_NONBLOCK) == os.O_APPEND
        os.write(fd, b"!")
    finally:
        os.close(fd)
    assert top.read_bytes() == b"top!"
    os.chmod(key, 0o640)  # the group may read it
    os.close(statefs.open_private(key, shared))
    for mode in (0o620, 0o602):
        os.chmod(key, mode)
        _refused(lambda: statefs.open_private(key, shared), key, f"is writable by others (mode {mode:04o})")
    os.chmod(key, 0o600)
    os.link(key, base / "second-name")
    _refused(lambda: statefs.open_private(key, shared), key,
             "has 2 hard links (another name points at the same file)")
    os.unlink(base / "second-name")
    os.chown(key, other.pw_uid, -1)
    _refused(lambda: statefs.open_private(key, shared), key,
             f"belongs to uid {other.pw_uid}, not to this account or root")
    os.chown(key, 0, -1)
    link = shared / "keys" / "link.key"
    os.symlink(key, link)
    _refused(lambda: statefs.open_private(link, shared), link, "is a symbolic link")
    os.mkfifo(shared / "keys" / "fifo.key", 0o600)
    (shared / "keys" / "dir.key").mkdir(mode=0o700)
    for name, flags in [("fifo.key", os.O_RDONLY), ("fifo.key", os.O_WRONLY),
                        ("dir.key", os.O_RDONLY), ("dir.key", os.O_RDWR)]:
        _refused(functools.partial(statefs.open_private, shared / "keys" / name, shared, flags),
                 shared / "keys" / name, "is not a regular file")
    with pytest.raises(FileNotFoundError):
        statefs.open_private(shared / "keys" / "absent.key", shared, os.O_RDWR | os.O_CREAT)
    with pytest.raises(FileNotFoundError):
        statefs.open_private(shared / "nodir" / "decision.key", shared)
    assert not (shared / "keys" / "absent.key").exists() and not (shared / "nodir").exists()
    os.symlink(shared / "keys", shared / "linked")
    _refused(lambda: statefs.open_private(shared / "linked" / "decision.key", shared), shared / "linked",
             "is a link or not a folder")


def test_open_private_as_an_account_takes_its_own_key_or_roots(shared: Path, other: pwd.struct_passwd) -> None:
    os.chown(shared, other.pw_uid, -1)

    def read(path: str, state_dir: str) -> str:
        fd = statefs.open_private(path, state_dir)
        try:
            return os.read(fd, 100).decode()
        finally:
            os.close(fd)

    theirs = _file(shared / "theirs.key", b"theirs", 0o600, uid=other.pw_uid)
    roots = _file(shared / "roots.key", b"root's", 0o644)
    _refused(lambda: read(str(theirs), str(shared)), theirs,  # root takes only its own
             f"belongs to uid {other.pw_uid}, not to this account or root")
    assert accounts.as_account(other, read, str(theirs), str(shared)) == "theirs"
    assert accounts.as_account(other, read, str(roots), str(shared)) == "root's"
    os.chown(roots, 1, -1)
    with pytest.raises(accounts.AccountError) as e:  # Unsafe crosses back as its message
        accounts.as_account(other, read, str(roots), str(shared))
    assert str(e.value) == _line(roots, "belongs to uid 1, not to this account or root")
