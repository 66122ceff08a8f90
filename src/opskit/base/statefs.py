"""The state dir shared by every account on a host (root, the git account's hooks, operators).

`install.sh --system` makes it root:opskit 2770: the setgid bit gives everything created inside
the group opskit. What opskit creates there (the journal and its -wal/-shm, locks, logs) must
also be group-writable whatever the creator's umask — a hook running under `umask 077` that
creates the journal would otherwise lock root and the operators out of it. A state dir without
the setgid bit is a personal one, and is left as the umask makes it.

Every member of the group can also plant a symlink, a hard link or a renamed file at any name
in a shared state dir (tests/test_state_links.py: root's cron-check, following a planted locks/NAME.lock,
truncated a root-owned 0600 file and made it 0660). So every open, create, chmod, truncate or
append opskit does in the state dir goes through open_file() here, and the rule is:

- The path is walked from the state dir one folder at a time (each opened O_DIRECTORY |
  O_NOFOLLOW, the next name opened relative to it with dir_fd=) and the last name is opened
  O_NOFOLLOW | O_NOCTTY | O_CLOEXEC (O_NONBLOCK while opening: a planted FIFO never hangs us).
  A link anywhere below the state dir is refused; the state dir itself is the admin's choice.
- A file this call creates (O_CREAT | O_EXCL) is ours: it gets its mode, and the group's rw
  in a shared dir. That is the only chmod opskit does on a file, so a secret renamed into a
  lock's or a log's name is never opened up to the group.
- An existing file is opened only when it is a regular file with one link (st_nlink == 1) and
  the account that could plant it could already do what we are about to do: in a shared dir,
  its group is the state dir's group and the group's mode bits allow our access (read; rw for
  any write, truncate or append); in a personal dir, it is ours or the dir owner's. So root
  writes into a file only when every member of the group could write it too: a row, a link or a
  rename planted by one of them never makes root do more than they could do themselves. A
  file that is only flocked (inbox.lock, cron.lock, is_held's probe) needs no group bits.
- Anything else raises Unsafe (exit 2): one line naming the path, what is wrong and the fix
  (`rm` it). Nothing is opened, created, truncated or chmodded — a dangling link's target is
  never created.
- SQLite opens its database by name, so a check before it is only half the rule: a member can
  swap a link in between (renameat2 RENAME_EXCHANGE in a loop). storage/journal.py
  connect_checked() never lets SQLite create the file (mode=rw / mode=ro), and before anything is read or written it finds
  the descriptor SQLite just opened (/proc/self/fd, check_opened) and compares its inode with the one
  check_sqlite() saw; another file is closed unread and unwritten, and Unsafe.

Stdlib only: the hooks create the journal.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import shlex
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opskit.base.errors import UsageError

_WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
_LEAF = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsafe(UsageError):
    """A path in the state dir that opskit will not open (a link, not a regular file, not
    the group's): exit 2, one line with the fix."""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        p = os.fspath(path)
        super().__init__(f"{p}: {why}; opskit does not follow links or open files the state dir's "
                         f"group could not; if nothing of yours is there, remove it: rm {shlex.quote(p)}")
        self.path = p


def is_shared(state_dir: str | os.PathLike[str]) -> bool:
    try:
        return bool(os.stat(state_dir).st_mode & stat.S_ISGID)
    except OSError:
        return False


def _parts(path: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> list[str]:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(state_dir))
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    if not parts or parts[0] == "..":
        raise ValueError(f"{path} is not inside the state dir {state_dir}")
    return parts


def _open_dir(state_dir: str | os.PathLike[str], parts: list[str], *, create: bool,
              shared: bool) -> int:
    """A descriptor of state_dir/parts..., never through a link; missing folders made (shared)."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = Path(state_dir)
    try:
        for name in parts:
            where = where / name
            made = False
            try:
                nxt = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o770 if shared else 0o750, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
                nxt = _open_dir_at(fd, name, where)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe(where, "is a link or not a folder") from None
                raise
            os.close(fd)
            fd = nxt
            if made and shared:
                st = os.fstat(fd)
                if st.st_uid == os.geteuid():
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXG | stat.S_ISGID)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir_at(fd: int, name: str, where: Path) -> int:
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Unsafe(where, "is a link or not a folder") from None
        raise


def check_existing(st: os.stat_result, path: str | os.PathLike[str], *, write: bool,
                   state_st: os.stat_result, flock_only: bool = False) -> None:
    """The rule for a file opskit did not just create (module docstring); raises Unsafe."""
    if not stat.S_ISREG(st.st_mode):
        raise Unsafe(path, "is not a regular file")
    if st.st_nlink != 1:
        raise Unsafe(path, f"has {st.st_nlink} hard links (another name points at the same file)")
    if flock_only and not write:
        return  # only flocked: neither its bytes nor its mode are touched
    if state_st.st_mode & stat.S_ISGID:
        want = stat.S_IRGRP | (stat.S_IWGRP if write else 0)
        if st.st_gid != state_st.st_gid or st.st_mode & want != want:
            try:
                group = grp.getgrgid(state_st.st_gid).gr_name
            except KeyError:
                group = str(state_st.st_gid)
            raise Unsafe(path, f"is not {'writable' if write else 'readable'} by group {group} "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}), so it is not a file opskit shares there")
    elif st.st_uid not in (os.geteuid(), state_st.st_uid):
        raise Unsafe(path, f"belongs to uid {st.st_uid}, not to this account or the state dir's owner")


def open_file(path: str | os.PathLike[str], state_dir: str | os.PathLike[str], flags: int,
              mode: int = 0o660, *, share: bool = True, flock_only: bool = False) -> int:
    """os.open() for a path inside the state dir, by the rule of the module docstring.

    flags are os.open's (O_RDONLY, O_RDWR, O_WRONLY, O_APPEND, O_CREAT, O_EXCL, O_TRUNC);
    O_TRUNC is done after the checks. A file created here gets `mode`, plus the group's rw in a
    shared dir when share is true. flock_only (O_RDONLY, the fd is only flocked): an existing
    file need not be the group's, only regular, single-link and not a link. Missing folders are created with O_CREAT. Raises Unsafe
    (exit 2), FileNotFoundError, FileExistsError (O_EXCL) or another OSError."""
    parts = _parts(path, state_dir)
    state_st = os.stat(state_dir)
    shared = bool(state_st.st_mode & stat.S_ISGID)
    create = bool(flags & os.O_CREAT)
    dfd = _open_dir(state_dir, parts[:-1], create=create, shared=shared)
    name = parts[-1]
    base = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)) | _LEAF | os.O_NONBLOCK
    try:
        fd = -1
        created = False
        for _ in range(5):  # a name removed or made between our two opens: look again
            if create:
                try:
                    fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode, dir_fd=dfd)
                    created = True
                    break
                except FileExistsError:
                    if flags & os.O_EXCL:
                        raise
            try:
                fd = os.open(name, base, dir_fd=dfd)
                break
            except FileNotFoundError:
                if not create:
                    raise
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise Unsafe(path, "is a symbolic link") from None
                if e.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO nobody writes, or a folder, opened for writing
                    raise Unsafe(path, "is not a regular file") from None
                raise
        if fd < 0:
            raise FileNotFoundError(errno.ENOENT, "appeared and vanished", os.fspath(path))
        try:
            st = os.fstat(fd)
            if created:
                if not stat.S_ISREG(st.st_mode):  # pragma: no cover - O_EXCL made it
                    raise Unsafe(path, "is not a regular file")
                # The umask stands, except that the group gets rw in a shared dir; a private
                # file (share=False) gets exactly its mode.
                want = (stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP if share and shared
                        else stat.S_IMODE(st.st_mode) if share else stat.S_IMODE(mode))
                if stat.S_IMODE(st.st_mode) != want:
                    os.fchmod(fd, want)
            else:
                check_existing(st, path, write=bool(flags & _WRITE), state_st=state_st, flock_only=flock_only)
                if flags & os.O_TRUNC:
                    os.ftruncate(fd, 0)
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dfd)


def create_exclusive(path: str | os.PathLike[str], state_dir: str | os.PathLike[str],
                     mode: int = 0o600) -> int:
    """A new file of exactly `mode` (never shared); FileExistsError when anything, a dangling
    link included, is at the name. For private files: decision.key, crash logs."""
    return open_file(path, state_dir, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, share=False)


def open_private(path: str | os.PathLike[str], state_dir: str | os.PathLike[str],
                 flags: int = os.O_RDONLY) -> int:
    """An existing private file (decision.key): regular, one link, reached without a link,
    owned by this account or root, and nobody but its owner and group can write it (the
    group not at all). Raises Unsafe or FileNotFoundError; the caller may fstat for more."""
    parts = _parts(path, state_dir)
    dfd = _open_dir(state_dir, parts[:-1], create=False, shared=False)
    try:
        try:
            fd = os.open(parts[-1], (flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)) | _LEAF | os.O_NONBLOCK,
                         dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Unsafe(path, "is a symbolic link") from None
            if e.errno in (errno.ENXIO, errno.EISDIR):
                raise Unsafe(path, "is not a regular file") from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(path, "is not a regular file")
        if st.st_nlink != 1:
            raise Unsafe(path, f"has {st.st_nlink} hard links (another name points at the same file)")
        if st.st_uid not in (os.geteuid(), 0):
            raise Unsafe(path, f"belongs to uid {st.st_uid}, not to this account or root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Unsafe(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat_in(path: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> os.stat_result | None:
    parts = _parts(path, state_dir)
    try:
        dfd = _open_dir(state_dir, parts[:-1], create=False, shared=False)
    except FileNotFoundError:
        return None
    try:
        st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dfd)
    if stat.S_ISLNK(st.st_mode):
        raise Unsafe(path, "is a symbolic link")
    return st


def check_sqlite(db: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> os.stat_result | None:
    """Before SQLite opens db by name (it follows links, and writes its -wal and -shm): each of
    the three absent, or a regular single-link file reached without a link; -wal and -shm also
    the group's (open_file's rule) or exactly what SQLite makes them, the db's owner and mode.
    (SQLite never writes over a db file that is not a database, so any owner may hold that.)
    Raises Unsafe: planted -wal/-shm links were exit 3 and followed (tests/test_state_links.py).
    Returns the db's lstat (None: absent), for check_opened to hold SQLite's open to."""
    state_st = os.stat(state_dir)
    main = _lstat_in(db, state_dir)
    if main is not None:
        check_existing(main, db, write=False, state_st=state_st, flock_only=True)
    for suffix in ("-wal", "-shm"):
        side = f"{os.fspath(db)}{suffix}"
        st = _lstat_in(side, state_dir)
        if st is None:
            continue
        check_existing(st, side, write=False, state_st=state_st, flock_only=True)
        if main is not None and (st.st_uid, st.st_mode) == (main.st_uid, main.st_mode):
            continue
        check_existing(st, side, write=True, state_st=state_st)
    return main


def open_files() -> dict[int, tuple[int, int]]:
    """This process's descriptors of regular files: fd -> (st_dev, st_ino)."""
    out: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc/self/fd"):  # its own descriptor is closed by now: EBADF below
        try:
            st = os.fstat(int(name))
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            out[int(name)] = (st.st_dev, st.st_ino)
    return out


def check_opened(before: dict[int, tuple[int, int]], seen: os.stat_result,
                 db: str | os.PathLike[str]) -> None:
    """After SQLite's connect (it opens the main file there and nothing else), before any read or
    write: the file it opened is `seen`, the one check_sqlite() checked; else Unsafe. With no new
    descriptor at all SQLite took back one it kept of that inode (a closed connection's, while
    another of this process locks it). The caller holds a lock so the new descriptors are its own."""
    after = open_files()
    want = (seen.st_dev, seen.st_ino)
    new = [ino for fd, ino in after.items() if before.get(fd) != ino]
    if want not in new and (new or want not in after.values()):
        raise Unsafe(db, "was replaced by another file while SQLite opened it (a link swapped in)")


@contextmanager
def opened(path: str | os.PathLike[str], state_dir: str | os.PathLike[str], flags: int,
           mode: int = 0o660, *, share: bool = True) -> Iterator[int]:
    """`with opened(...) as fd:` — open_file, closed after."""
    fd = open_file(path, state_dir, flags, mode, share=share)
    try:
        yield fd
    finally:
        os.close(fd)


def append_bytes(path: str | os.PathLike[str], state_dir: str | os.PathLike[str], data: bytes) -> None:
    with opened(path, state_dir, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
        os.write(fd, data)


def redirect_output(path: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> None:
    """Append this process's stdout and stderr (and its children's) to path, opened by the rule
    above: what cron's lines use instead of the shell's `>> LOG` (tests/test_state_links.py)."""
    try:
        fd = open_file(path, state_dir, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except ValueError:
        raise UsageError(f"--log {os.fspath(path)}: not inside the state dir {os.fspath(state_dir)}; "
                         "rerun `opskit cron install`") from None
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def share(path: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> None:
    """Give the group a folder we made, or an empty file of ours (just created by a library
    that has no mode argument). A file with content is never chmodded: a secret renamed to
    this name by a group member would be opened up (module docstring). Never follows a link."""
    if not is_shared(state_dir):
        return
    try:
        parts = _parts(path, state_dir)
        dfd = _open_dir(state_dir, parts[:-1], create=False, shared=True)
        try:
            # O_PATH: closing a real descriptor of journal.db or its -shm would drop the POSIX
            # locks this process's SQLite connections hold there (a follower then reads a stale
            # snapshot: tests/test_server.py, events --follow); an O_PATH one holds and drops none.
            fd = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                return
            if stat.S_ISDIR(st.st_mode):
                want = stat.S_IRWXG | stat.S_ISGID
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size == 0:
                want = stat.S_IRGRP | stat.S_IWGRP
            else:
                return
            if st.st_mode & want != want:
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | want)  # that very inode
        finally:
            os.close(fd)
    except (OSError, ValueError, Unsafe):
        pass


def share_fd(fd: int, state_dir: str | os.PathLike[str]) -> None:
    """Kept for callers outside the state dir's rule: only an empty single-link file of ours."""
    if not is_shared(state_dir):
        return
    try:
        st = os.fstat(fd)
        want = stat.S_IRGRP | stat.S_IWGRP
        if (st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and st.st_size == 0 and st.st_mode & want != want):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | want)
    except OSError:
        pass


def mkdir(path: Path, state_dir: str | os.PathLike[str]) -> None:
    """mkdir -p inside the state dir, each new folder shared; never through a link (Unsafe)."""
    try:
        parts = _parts(path, state_dir)
    except ValueError:
        Path(path).mkdir(parents=True, exist_ok=True)  # not in the state dir: not our rule
        return
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    os.close(_open_dir(state_dir, parts, create=True, shared=is_shared(state_dir)))


def not_writable(state_dir: str | os.PathLike[str]) -> str | None:
    """None when this account can write state_dir (or create it); else the one line saying who
    cannot and the fix."""
    p = Path(state_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    if os.access(p, os.W_OK | os.X_OK):
        return None
    return denied(p, f"state dir {state_dir}", "write")


def denied(p: Path, what: str, verb: str) -> str:
    """One line: which account cannot `verb` what, and a fix that is true: joining the group
    when the group may `verb` it, else who can (a root:root file got `usermod -aG root`: tests/test_root_paths.py)."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    try:
        st = os.stat(p)
    except OSError:
        return (f"{what}: account {name} cannot {verb} it ({p} is out of its reach); "
                "run opskit as root (sudo opskit …) or ask an admin to give the account access")
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    folder = stat.S_ISDIR(st.st_mode)
    need = {"read": stat.S_IRGRP | (stat.S_IXGRP if folder else 0),
            "write": stat.S_IWGRP | (stat.S_IXGRP if folder else 0)}.get(verb, stat.S_IRWXG)
    mode = f"{owner}:{group} {stat.S_IMODE(st.st_mode):04o}"
    if st.st_gid != 0 and st.st_mode & need == need:
        return (f"{what}: account {name} cannot {verb} it ({p} is {mode}: it belongs to group {group}); "
                f"add the account to the group: usermod -aG {group} {name} (then log in again)")
    sudo = "sudo opskit …" if st.st_uid == 0 else f"sudo -u {owner} opskit …"
    bits = "g+rwX" if verb == "write" else "g+rX"
    return (f"{what}: account {name} cannot {verb} it ({p} is {mode}: only {owner} can); run opskit as "
            f"{owner} ({sudo}), or give it to opskit's group: chgrp GROUP {p} && chmod {bits} {p}")
