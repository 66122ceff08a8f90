"""`opskit keys add|list|remove`: the push account's authorized_keys, one forced-command line a key.

As gitolite, piku and Dokku (`ssh-keys:add`) do, every key opskit manages is one line

    restrict,command="PYTHON -I -m opskit.guard.sshshell --config CONFIG --key NAME" TYPE BLOB opskit:NAME

`restrict` takes away port, agent and X11 forwarding, the pty and ~/.ssh/rc; the forced command
(guard/sshshell.py) lets the key git push and git fetch this account's opskit repos and nothing
else. Lines without the `opskit:NAME` comment were added by hand: they are kept byte for byte and
listed as not managed.

Root writes into a folder the push account owns (and pushed code running as that account can
change): nothing is opened by path there. ~/.ssh and authorized_keys are opened with O_NOFOLLOW
relative to the folder above (`dir_fd`), fstat'ed (a link, a foreign owner, a second hard link
or a non-file is refused), and the new file is created O_EXCL beside the old, chowned and
chmodded through its descriptor, and renamed over it — so a planted link is never followed and a
reader (sshd) sees the old file or the new. base/atomic.py's replace_file chmods by path, which a
swap between its calls would turn onto another file; that is why it is not used here.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import os
import pwd
import secrets
import shlex
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import accounts, proc
from opskit.base.config import NAME, Settings
from opskit.base.errors import UsageError
from opskit.base.text import shown

MARKER = "opskit:"
SHIM = "opskit.guard.sshshell"
MAX_NAME = 64
MAX_FILE = 1 << 20  # an authorized_keys bigger than this is not one opskit should rewrite
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
_NO_SHELL = ("nologin", "false", "git-shell")
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_LOCK_WAIT = 10.0


# --- one line of authorized_keys ------------------------------------------------------------

@dataclass(frozen=True)
class KeyLine:
    number: int
    options: str
    kind: str
    blob: str
    comment: str

    @property
    def name(self) -> str | None:
        """The opskit name of a managed line; None for a line added by hand."""
        if self.comment.startswith(MARKER) and " " not in self.comment:
            return self.comment[len(MARKER):]
        return None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: str) -> str:
    """OpenSSH's SHA256 fingerprint of a key (what `ssh-keygen -l` and sshd's log show)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "?"
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def _split_options(text: str) -> tuple[str, str]:
    """authorized_keys options end at the first blank outside double quotes (sshd's rule: `\\"`
    is the only escape inside them)."""
    i, quoted = 0, False
    while i < len(text):
        c = text[i]
        if quoted and c == "\\" and text[i + 1:i + 2] == '"':
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            break
        i += 1
    return text[:i], text[i:].lstrip(" \t")


def parse_line(number: int, text: str) -> KeyLine | None:
    """A key line, or None for a blank line, a comment or something sshd would skip."""
    s = text.strip()
    if not s or s.startswith("#"):
        return None
    options = ""
    first = s.split(None, 1)[0]
    if not (first.startswith(("ssh-", "ecdsa-", "sk-"))):
        options, s = _split_options(s)
    parts = s.split(None, 2)
    if len(parts) < 2:
        return None
    return KeyLine(number, options, parts[0], parts[1], parts[2].strip() if len(parts) > 2 else "")


def forced_command(python: str, config: str, name: str) -> str:
    return " ".join(shlex.quote(a) for a in (python, "-I", "-m", SHIM, "--config", config, "--key", name))


def entry_line(python: str, config: str, name: str, kind: str, blob: str) -> str:
    # Inside command="…" sshd takes \" for a quote and every other character as it is.
    command = forced_command(python, config, name).replace('"', '\\"')
    return f'restrict,command="{command}" {kind} {blob} {MARKER}{name}\n'


# --- what the operator gives us -------------------------------------------------------------

def check_name(name: str) -> None:
    if not NAME.match(name) or len(name) > MAX_NAME:
        raise UsageError(f"key name {shown(name)!r}: use letters, digits, '.', '_' and '-', starting with a "
                         f"letter or digit, at most {MAX_NAME} characters (e.g. alice-laptop)")


@dataclass(frozen=True)
class PublicKey:
    kind: str
    blob: str
    fingerprint: str


def read_public_key(path: str, data: bytes | None = None) -> PublicKey:
    """One OpenSSH public key from path ('-': data, read from stdin), checked by ssh-keygen."""
    where = "stdin" if path == "-" else path
    if data is None:
        data = _read_small(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a public key (not text); give the .pub file") from None
    if "PRIVATE KEY" in text:
        raise UsageError(f"{where} is a private key: give its public half ({where}.pub, or "
                         f"ssh-keygen -y -f {where} > key.pub); nothing was added")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise UsageError(f"{where} holds {len(lines) or 'no'} key lines; give a file with exactly one "
                         "public key (id_ed25519.pub)")
    words = lines[0].split()
    kind = words[0]
    if kind not in KEY_TYPES or len(words) < 2:
        raise UsageError(f"{where}: not an OpenSSH public key line (it starts with {shown(kind[:40])!r}; "
                         f"expected one of {', '.join(KEY_TYPES[:3])}, …; options are not accepted)")
    blob = words[1]
    try:
        raw = base64.b64decode(blob, validate=True)
        (n,) = struct.unpack(">I", raw[:4])
        inner = raw[4:4 + n].decode("ascii")
    except (binascii.Error, ValueError, struct.error, UnicodeDecodeError):
        raise UsageError(f"{where}: the key's base64 is damaged; copy the .pub file again") from None
    if inner != kind:
        raise UsageError(f"{where}: the key says {kind} but holds {shown(inner[:40])}; copy the .pub file again")
    _ssh_keygen_accepts(where, kind, blob)
    return PublicKey(kind, blob, fingerprint(blob))


def _read_small(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read(MAX_FILE + 1)[:MAX_FILE]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}; give the path of a public key file (id_ed25519.pub)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UsageError(f"{path} is not a file; give the path of a public key file (id_ed25519.pub)")
        return f.read(64 * 1024)


def _ssh_keygen_accepts(where: str, kind: str, blob: str) -> None:
    with tempfile.TemporaryDirectory(prefix="opskit-key-") as d:
        p = Path(d) / "key.pub"
        p.write_text(f"{kind} {blob}\n")
        try:
            r = proc.run(["ssh-keygen", "-l", "-f", str(p)], capture=True, timeout=30)
        except FileNotFoundError:
            raise UsageError("ssh-keygen is not installed; apt-get install openssh-client") from None
    if not r.ok:
        last = (r.stderr.strip().splitlines() or [r.describe()])[-1]
        raise UsageError(f"{where}: ssh-keygen does not accept the key ({shown(last.replace(str(p), 'key'))})")


# --- which account --------------------------------------------------------------------------

def target_account(settings: Settings, user: str | None) -> pwd.struct_passwd:
    """--user, else the one account every local service's repo belongs to."""
    if user:
        pw = accounts.account(user)
        if pw is None:
            raise UsageError(f"--user {shown(user)}: no such account; give the account developers push to")
    else:
        found: dict[str, pwd.struct_passwd] = {}
        for svc in settings.services.values():
            if svc.pull_mode:
                continue
            a = accounts.service_account(svc)
            if a is not None:
                found[a.pw_name] = a
        if len(found) != 1:
            why = (f"the services use {len(found)} accounts ({', '.join(sorted(found))})" if found
                   else "no service in the config has a repo on this host yet")
            raise UsageError(f"which account's keys? {why}; pass --user ACCOUNT")
        pw = next(iter(found.values()))
    if pw.pw_uid == 0:
        raise UsageError("--user root: push keys belong to the account developers push to, never root")
    if os.geteuid() not in (0, pw.pw_uid):
        raise UsageError(f"the keys of {pw.pw_name} are managed by root or {pw.pw_name}, and you are "
                         f"{accounts.me()}: sudo opskit keys … (or sudo -u {pw.pw_name} opskit keys …)")
    return pw


def _repos_of(settings: Settings, pw: pwd.struct_passwd) -> list[str]:
    out = []
    for svc in settings.services.values():
        a = None if svc.pull_mode else accounts.service_account(svc)
        if a is not None and a.pw_uid == pw.pw_uid:
            out.append(svc.repo)
    return out


# --- ~/.ssh, opened without following anything ----------------------------------------------

@dataclass
class _Folder:
    pw: pwd.struct_passwd
    path: Path  # for messages only: every operation goes through fd
    fd: int
    notes: list[str] = field(default_factory=list)


def _refuse(path: Path, problem: str) -> UsageError:
    return UsageError(f"{path} {problem}; refusing to touch it as {accounts.me()} (nothing changed); "
                      "fix it by hand, then run this again")


def _allowed_owner(st: os.stat_result, pw: pwd.struct_passwd) -> bool:
    return st.st_uid in (pw.pw_uid, 0)


@contextmanager
def _ssh_folder(pw: pwd.struct_passwd, *, create: bool) -> Iterator[_Folder | None]:
    home = Path(pw.pw_dir)
    try:
        # The home folder itself is the administrator's path (useradd): it may be a link they made.
        home_fd = os.open(home, _O_DIR)
    except OSError as e:
        raise UsageError(f"home of {pw.pw_name} ({home}): {e.strerror}; create it (usermod -d DIR -m "
                         f"{pw.pw_name})") from None
    try:
        st = os.fstat(home_fd)
        if not _allowed_owner(st, pw):
            raise _refuse(home, f"belongs to uid {st.st_uid}, not {pw.pw_name}")
        made = False
        if create:
            try:
                os.mkdir(".ssh", 0o700, dir_fd=home_fd)
                made = True
            except FileExistsError:
                pass
        try:
            fd = os.open(".ssh", _O_DIR | os.O_NOFOLLOW, dir_fd=home_fd)
        except FileNotFoundError:
            yield None
            return
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse(home / ".ssh", "is a symbolic link or not a folder") from None
            raise
        try:
            folder = _Folder(pw, home / ".ssh", fd)
            st = os.fstat(fd)
            if made:
                if os.geteuid() == 0:
                    os.fchown(fd, pw.pw_uid, pw.pw_gid)
                os.fchmod(fd, 0o700)
                folder.notes.append(f"created {folder.path} ({pw.pw_name}, 0700)")
            elif not _allowed_owner(st, pw):
                raise _refuse(folder.path, f"belongs to uid {st.st_uid}, not {pw.pw_name}")
            elif create and stat.S_IMODE(st.st_mode) & 0o022:
                # sshd (StrictModes) ignores every key in a folder others can write
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
                folder.notes.append(f"{folder.path}: removed group/other write (sshd ignores keys otherwise)")
            yield folder
        finally:
            os.close(fd)
    finally:
        os.close(home_fd)


def _lock(folder: _Folder) -> None:
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(folder.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise UsageError(f"{folder.path} is locked by another `opskit keys`; try again") from None
            time.sleep(0.1)


@dataclass
class _Current:
    data: bytes
    stat: os.stat_result | None


def _read_keys(folder: _Folder) -> _Current:
    path = folder.path / "authorized_keys"
    try:
        fd = os.open("authorized_keys", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder.fd)
    except FileNotFoundError:
        return _Current(b"", None)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link") from None
        raise UsageError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a regular file")
        if not _allowed_owner(st, folder.pw):
            raise _refuse(path, f"belongs to uid {st.st_uid}, not {folder.pw.pw_name}")
        if st.st_nlink != 1:
            raise _refuse(path, f"has {st.st_nlink} hard links (one may be another account's file)")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise UsageError(f"{path} is over {MAX_FILE} bytes; opskit will not rewrite it")
    return _Current(data, st)


def _write_keys(folder: _Folder, current: _Current, data: bytes) -> None:
    pw = folder.pw
    # The owner and mode it had (sshd reads it as the account: a root-owned file stays readable),
    # without group/other write; a new file is the account's, 0600.
    if current.stat is not None:
        uid, gid = current.stat.st_uid, current.stat.st_gid
        mode = stat.S_IMODE(current.stat.st_mode) & 0o644
    else:
        uid, gid, mode = pw.pw_uid, pw.pw_gid, 0o600
    tmp = f".authorized_keys.opskit-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=folder.fd)
    try:
        try:
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, "authorized_keys", src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder.fd)
        except OSError:
            pass
        raise
    os.fsync(folder.fd)


def _lines(data: bytes) -> list[tuple[bytes, KeyLine | None]]:
    out = []
    for i, raw in enumerate(data.splitlines(keepends=True), 1):
        out.append((raw, parse_line(i, raw.decode("utf-8", "surrogateescape"))))
    return out


# --- the three commands ---------------------------------------------------------------------

@dataclass
class KeyInfo:
    name: str | None
    kind: str
    fingerprint: str
    line: int
    state: str  # ok | edited | not managed
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "fingerprint": self.fingerprint, "line": self.line,
                "managed": self.name is not None, "state": self.state, "comment": self.comment}


@dataclass
class KeysResult:
    account: str
    path: Path
    action: str  # added | unchanged | rewritten | removed
    name: str
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"account": self.account, "path": str(self.path), "action": self.action, "name": self.name,
                "fingerprint": self.fingerprint, "changed": self.action != "unchanged", "notes": self.notes}


def _python() -> str:
    python = sys.executable
    if not python or any(c in python for c in "\n\r\0"):
        raise UsageError("cannot tell which Python runs opskit (sys.executable); run opskit from its venv")
    return python


def _config(settings: Settings) -> str:
    if settings.path is None:
        raise UsageError("keys add needs a config file (the key's forced command reads it on every push): "
                         "pass --config /etc/opskit/opskit.toml")
    path = os.path.abspath(settings.path)
    if any(c in path for c in "\n\r\0"):
        raise UsageError(f"config path {shown(path)!r} holds a line break; move the config")
    return path


def _check_interpreter(python: str, pw: pwd.struct_passwd) -> None:
    """The forced command runs as the account: refuse to write one it cannot start."""
    if os.geteuid() != 0:
        return
    r = proc.run(["/bin/sh", "-c", f'exec "$0" -I -c "import {SHIM}"', python], user=pw, capture=True, timeout=30)
    if not r.ok:
        raise UsageError(f"{pw.pw_name} cannot start {python} "
                         f"({(r.stderr.strip().splitlines() or [r.describe()])[-1]}); install opskit for "
                         "every account (sudo ./install.sh --system) and run /usr/local/bin/opskit")


def _expected(python: str, config: str, line: KeyLine, name: str) -> str:
    return entry_line(python, config, name, line.kind, line.blob)


def add(settings: Settings, name: str, pubkey_path: str, user: str | None = None, *,
        data: bytes | None = None) -> KeysResult:
    check_name(name)
    config = _config(settings)
    python = _python()
    key = read_public_key(pubkey_path, data)
    pw = target_account(settings, user)
    _check_interpreter(python, pw)
    want = entry_line(python, config, name, key.kind, key.blob)
    notes = []
    shell = os.path.basename(pw.pw_shell or "")
    if shell in _NO_SHELL:
        notes.append(f"{pw.pw_name}'s login shell is {pw.pw_shell}: sshd runs the forced command through it, "
                     f"which will refuse it; usermod -s /bin/sh {pw.pw_name}")
    if not _repos_of(settings, pw):
        notes.append(f"no service's repo belongs to {pw.pw_name} yet: the key can push nowhere until one does")
    with _ssh_folder(pw, create=True) as folder:
        assert folder is not None
        _lock(folder)
        current = _read_keys(folder)
        out: list[bytes] = []
        action = "added"
        for raw, line in _lines(current.data):
            if line is not None and line.blob == key.blob and line.name != name:
                where = f"as {line.name!r}" if line.name else "in a line added by hand (not managed)"
                raise UsageError(f"this key ({key.fingerprint}) is already in {folder.path} line {line.number} "
                                 f"{where}; remove that first (opskit keys remove NAME, or edit the file)")
            if line is not None and line.name == name:
                if line.blob != key.blob:
                    raise UsageError(f"key name {name!r} already holds another key ({line.fingerprint}); "
                                     f"opskit keys remove {name} first, or pick another name")
                if raw.decode("utf-8", "surrogateescape").rstrip("\r\n") + "\n" == want:
                    action = "unchanged"
                    out.append(raw)
                else:
                    action = "rewritten"
                    out.append(want.encode())
                continue
            out.append(raw)
        if action == "added":
            if out and not out[-1].endswith(b"\n"):
                out[-1] += b"\n"
            out.append(want.encode())
        if action != "unchanged":
            _write_keys(folder, current, b"".join(out))
        return KeysResult(pw.pw_name, folder.path / "authorized_keys", action, name, key.fingerprint,
                          folder.notes + notes)


def remove(settings: Settings, name: str, user: str | None = None) -> KeysResult:
    check_name(name)
    pw = target_account(settings, user)
    with _ssh_folder(pw, create=False) as folder:
        path = Path(pw.pw_dir) / ".ssh" / "authorized_keys"
        if folder is None:
            raise UsageError(f"no key named {name!r} ({path} does not exist); nothing changed")
        _lock(folder)
        current = _read_keys(folder)
        kept: list[tuple[bytes, KeyLine | None]] = []
        gone: list[tuple[bytes, KeyLine | None]] = []
        for raw, line in _lines(current.data):
            (gone if line is not None and line.name == name else kept).append((raw, line))
        if not gone:
            raise UsageError(f"no key named {name!r} in {path} (opskit keys list shows them); nothing changed")
        _write_keys(folder, current, b"".join(raw for raw, _ in kept))
        fp = gone[0][1].fingerprint if gone[0][1] is not None else "?"
        return KeysResult(pw.pw_name, path, "removed", name, fp, folder.notes)


def list_keys(settings: Settings, user: str | None = None) -> tuple[str, Path, list[KeyInfo]]:
    pw = target_account(settings, user)
    path = Path(pw.pw_dir) / ".ssh" / "authorized_keys"
    python = sys.executable
    config = os.path.abspath(settings.path) if settings.path else None
    with _ssh_folder(pw, create=False) as folder:
        if folder is None:
            return pw.pw_name, path, []
        current = _read_keys(folder)
    out = []
    for raw, line in _lines(current.data):
        if line is None:
            continue
        if line.name is None:
            state = "not managed"
        elif config is not None and raw.decode("utf-8", "surrogateescape").rstrip("\r\n") + "\n" \
                == _expected(python, config, line, line.name):
            state = "ok"
        else:
            # An edited option, or written by another opskit install or config: `keys add` again rewrites it.
            state = "edited"
        out.append(KeyInfo(line.name, line.kind, line.fingerprint, line.number, state,
                           "" if line.name else line.comment))
    return pw.pw_name, path, out
