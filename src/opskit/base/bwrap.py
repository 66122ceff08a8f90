"""The sandbox for commands that run pushed code (the chain's test and review, a health cmd probe), with bubblewrap.

Code on a feature branch was written minutes ago by someone (or something) nobody has reviewed
yet; an allowlisted environment does not stop it from reading the .env beside the config,
writing the journal or the deployed worktree, or calling the webhook receiver on loopback.
Inside the sandbox (the `argv` below, Flatpak's tool, no setuid and no daemon):

- the root filesystem is read-only; /dev and /proc are the sandbox's own; /tmp is empty;
- the state dir, the config dir (and its .env), every service's deployed worktree and bare repo,
  and the account's HOME are empty tmpfs mounts — except the read-only slice of the service's
  repo that git needs to read history in the checkout (objects, refs, HEAD; no hooks, no config);
- the working directory is a private, writable copy of the checkout, thrown away afterwards;
- no network (not even loopback services: its own network namespace), and /run hidden so
  Unix sockets (a Docker or D-Bus socket) are out of reach too, unless the service sets
  `sandbox_network = true`;
- its own PID namespace and --die-with-parent: when the command exits or its timeout kills
  bwrap, every process it started is gone.

It is not a VM: the kernel is shared, and what the account can read outside the hidden paths
(/etc, /usr, other users' world-readable files) it can read inside. This module only builds
argv and checks bwrap can start; chain/feature.py (test, review) and deploy/rollout.py (the
cmd probe) run it through proc like any other command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.base import accounts, proc
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import OpsError

MODES = ("bwrap", "none")
FIX = ("install bubblewrap (apt-get install bubblewrap) or set sandbox = \"none\" under [service.{name}], "
       "knowing that pushed code then runs with this account's files, secrets and network")
# What git needs from a repository (the common dir of a `git worktree`) to read history.
_GIT_READ = ("HEAD", "objects", "refs", "packed-refs", "shallow", "info")


class Unavailable(OpsError):
    """bwrap is missing or cannot start a sandbox here; pushed code is then not run at all."""


@dataclass(frozen=True)
class Policy:
    work: Path | None  # the private copy of the checkout: writable, the working directory
    hide: tuple[Path, ...] = ()  # become empty tmpfs mounts
    hide_files: tuple[Path, ...] = ()  # unreadable: /dev/null over them, on a nodev mount
    read_only: tuple[Path, ...] = ()  # shown again read-only (under a hidden path, e.g. git objects)
    network: bool = False
    chdir: Path | None = None  # with no work dir: where the command starts (read-only, like the rest)


def argv(policy: Policy, command: Sequence[str], *, bwrap: str = "bwrap") -> list[str]:
    """The bwrap command line that runs `command` under `policy`.

    Mount order is the design: later mounts cover earlier ones, so the hidden paths come after
    the read-only root and the fresh /tmp, and the read-only git slice and the work dir come
    last — a checkout copy under a hidden path (TMPDIR inside HOME, a config dir holding
    everything) must still be there.
    """
    out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if not policy.network:
        out += ["--tmpfs", "/run"]
    # Mounts go where the paths really are: bwrap cannot mount on a symlink (a HOME or /srv that
    # is a link elsewhere), and through the link the real place is what is seen anyway.
    hide = [_real(p) for p in policy.hide]
    hide_files = sorted({_real(p) for p in policy.hide_files})
    for p in _outermost(hide):
        out += ["--tmpfs", str(p)]
    for p in hide_files:
        if _exists(p, dir=False):
            out += ["--ro-bind", "/dev/null", str(p)]
    shown = sorted({_real(p) for p in policy.read_only}, key=lambda q: len(q.parts))
    for p in shown:
        out += ["--ro-bind", str(p), str(p)]
    # A path shown again (a deployed worktree under HOME) must not bring back a hidden one below
    # it (a state dir inside that worktree): hide those once more, after it.
    for p in _outermost([h for h in hide if any(h != r and h.is_relative_to(r) for r in shown)]):
        out += ["--tmpfs", str(p)]
    for p in sorted(f for f in hide_files if any(f.is_relative_to(r) for r in shown)):
        if _exists(p, dir=False):
            out += ["--ro-bind", "/dev/null", str(p)]
    if policy.work is not None:
        out += ["--bind", str(policy.work), str(policy.work), "--chdir", str(policy.work)]
    elif policy.chdir is not None:
        out += ["--chdir", str(policy.chdir)]
    out += ["--unshare-all"]
    if policy.network:
        out += ["--share-net"]
    # --new-session: no TIOCSTI into a terminal we might have; --die-with-parent: if opskit (or
    # the timeout's kill of bwrap) ends, the sandbox's pid 1 gets SIGKILL and its namespace with it.
    out += ["--die-with-parent", "--new-session", "--setenv", "TMPDIR", "/tmp"]
    out += ["--", *command]
    return out


def policy_for(settings: Settings, svc: ServiceSettings, work: Path, checkout: Path, command: str | None = None,
               *, home: Path | None = None) -> Policy:
    """What a test or review of `svc` may see: `work` (the copy of `checkout`) and nothing of
    opskit's or production's. Every service's repo and worktree is hidden, not only this one's:
    one host's services trust each other no more than they trust the pushed code. The program
    `command` names by an absolute path (`/etc/opskit/review.sh`) is shown again, that file
    alone, and `sandbox_bind` read-only: the operator's own tools, not secrets beside them."""
    hidden, files = _hidden(settings)
    interpreter = _interpreter(hidden)
    shown = [*git_slice(checkout), *interpreter, *binds(svc)]
    tools = _shown_tools(settings, command, hidden, shown, home=home)
    return Policy(work=work, hide=tuple(hidden), hide_files=tuple(files),
                  read_only=tuple(git_slice(checkout) + interpreter + tools + binds(svc)),
                  network=svc.sandbox_network)


def _shown_tools(settings: Settings, command: str | None, hidden: Sequence[Path], shown: Sequence[Path], *,
                 home: Path | None = None) -> list[Path]:
    """The programs `command` names that must be bound again: only one the sandbox hides (one on
    the read-only root is visible as it is, and bwrap cannot make a mount point there: the demo's
    `.venv/bin/python …`), and none already inside a path shown whole (a venv's `bin/python`
    under a `sandbox_bind`: binding it again fails the same way)."""
    fresh = [*hidden, Path("/tmp"), Path("/run")]
    out = []
    for t in tool_files(settings, command, home=home) if command else []:
        real = Path(os.path.realpath(t))
        if not any(t.is_relative_to(h) or real.is_relative_to(h) for h in fresh):
            continue
        if any(t.is_relative_to(s) or real.is_relative_to(Path(os.path.realpath(s))) for s in shown):
            continue
        out.append(t)
    return out


def _hidden(settings: Settings, *, shown: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(directories, files) hidden from pushed code; `shown`: a worktree left visible (read-only)."""
    dirs, files = _hidden_labelled(settings, shown=shown)
    return _resolved([p for p, _ in dirs]), [p for p, _ in files]


def _hidden_labelled(settings: Settings, *, shown: Path | None = None
                     ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """The same as _hidden, each path with what it is (for the message that says why a tool is hidden)."""
    hide: list[tuple[Path, str]] = [(settings.state_dir, "the state dir")]
    hide += [(h, "the account's home") for h in homes()]
    files: list[tuple[Path, str]] = []
    if settings.path is not None:
        cfg = Path(settings.path).resolve()
        if len(cfg.parent.parts) > 2:
            hide.append((cfg.parent, "the config dir (it holds the .env)"))
        else:  # /etc/opskit.toml: hiding /etc would take the system with it; hide the two files
            files += [(cfg, "the config"), (cfg.parent / ".env", "the .env")]
    for other in settings.services.values():
        if shown is None or Path(other.worktree).resolve() != shown.resolve():
            hide.append((Path(other.worktree), f"service {other.name}'s deployed worktree"))
        if not other.pull_mode:
            hide.append((Path(other.repo), f"service {other.name}'s bare repo"))
        # The home of the account the step runs as when root drops to it (its ~/.ssh, its git
        # credentials), and of every other service's account: not only the caller's own HOME.
        pw = accounts.service_account(other)
        if pw is not None and pw.pw_dir not in ("", "/"):
            hide.append((Path(pw.pw_dir), f"the home of {pw.pw_name}"))
    return hide, files


# --- the operator's tools: what a command names, shown again; what stays hidden, and why -------

_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# `sh script`, `python3 script`: the script is the program too.
_INTERPRETERS = re.compile(r"^(sh|bash|dash|zsh|ksh|python[0-9.]*|perl|ruby|node)$")


def programs(command: str, *, home: Path | None = None, path: str | None = None) -> list[Path]:
    """The programs `command` runs, as the shell would find them: its first word (after `env`
    and `VAR=value` prefixes; `~/` expanded, a bare name looked up on `path`), and the script of
    `sh script` / `python3 script`. Only absolute results; a command that does not parse has none."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    if words and words[0] in ("env", "/usr/bin/env"):
        words = words[1:]
    while words and (_ASSIGN.match(words[0]) or words[0].startswith("-")):
        words = words[1:]
    if not words:
        return []
    home_s = str(home or account_home() or "")

    def absolute(word: str, lookup: bool) -> Path | None:
        if word.startswith("~/") and home_s:
            word = home_s.rstrip("/") + word[1:]
        if word.startswith("/"):
            return Path(os.path.normpath(word))
        if lookup and "/" not in word and path != "":
            found = shutil.which(word, path=path if path is not None else os.environ.get("PATH", ""))
            return Path(found) if found else None
        return None

    out = [p for p in (absolute(words[0], True),) if p is not None]
    if _INTERPRETERS.match(Path(words[0]).name):
        rest = [w for w in words[1:] if not w.startswith("-")]
        if rest and (p := absolute(rest[0], False)) is not None:
            out.append(p)
    return out


def binds(svc: ServiceSettings) -> list[Path]:
    """`sandbox_bind` paths that exist (a missing one is doctor's warning, not bwrap's error)."""
    return [Path(b) for b in svc.sandbox_bind if os.path.lexists(b)]


def _never_shown(settings: Settings, p: Path) -> bool:
    """A file no tool may be: the config, its .env, anything in the state dir or a service's repo."""
    real = p.resolve()
    if real.name == ".env" or p.name == ".env":
        return True
    if settings.path is not None and real == Path(settings.path).resolve():
        return True
    guarded = [settings.state_dir] + [Path(s.repo) for s in settings.services.values() if not s.pull_mode]
    return any(real.is_relative_to(g.resolve()) or p.is_relative_to(g) for g in guarded)


def tool_files(settings: Settings, command: str | None, *, home: Path | None = None) -> list[Path]:
    """The files `command` names by absolute path that are shown again inside: each file alone
    (never its folder: a review.sh beside the config must not bring the .env with it), and never
    the config, a .env, the state dir's or a repo's files."""
    if not command:
        return []
    out: list[Path] = []
    for p in programs(command, home=home, path=""):
        if _exists(p, dir=False) and not _never_shown(settings, p) and p not in out:
            out.append(p)
    return out


@dataclass(frozen=True)
class HiddenTool:
    program: Path
    why: str  # "is under the account's home, hidden by the sandbox"
    bind: Path | None  # what sandbox_bind would need (None: it cannot be shown)

    def fix(self, service: str) -> str:
        if self.bind is None:
            return "keep the tool somewhere else (system-wide, or in the repository)"
        return f"install it system-wide, or add it to [service.{service}] sandbox_bind = [\"{self.bind}\"]"

    def advice(self, service: str) -> str:
        return f"{self.program} {self.why}; {self.fix(service)}"


def hidden_tools(settings: Settings, svc: ServiceSettings, command: str | None, *,
                 home: Path | None = None, path: str | None = None) -> list[HiddenTool]:
    """The programs of `command` that exist on this host but that the sandbox of `svc` would
    not show (doctor before any push; the step's message after a "not found")."""
    if not command or svc.sandbox != "bwrap":
        return []
    dirs, files = _hidden_labelled(settings)
    dirs += [(Path("/tmp"), "/tmp (the sandbox has its own, empty)")]
    if not svc.sandbox_network:
        dirs += [(Path("/run"), "/run (hidden without sandbox_network)")]
    shown = [*binds(svc), *_interpreter(_hidden(settings)[0])]
    auto = tool_files(settings, command, home=home)
    out: list[HiddenTool] = []
    for p in programs(command, home=home, path=path):
        if not _exists(p, dir=False):
            continue
        for target, kind in _needs(p):
            if any(target.is_relative_to(s) for s in shown) or (kind == "program" and p in auto):
                continue
            where = _why_hidden(target, dirs, files)
            if where is None:
                continue
            if _never_shown(settings, target):
                out.append(HiddenTool(p, f"is in {where}, hidden by the sandbox (and never shown)", None))
            elif kind == "venv":
                out.append(HiddenTool(p, f"is in the virtualenv {target}, under {where}, hidden by the sandbox "
                                      "(it shows a program named by its path, not the virtualenv it needs)", target))
            elif kind == "interpreter":
                out.append(HiddenTool(p, f"needs its interpreter {target}, under {where}, hidden by the sandbox",
                                      target))
            else:
                out.append(HiddenTool(p, f"is under {where}, hidden by the sandbox", target))
            break
    return out


def _needs(p: Path) -> list[tuple[Path, str]]:
    """What must be visible for `p` to run: itself, its virtualenv (bin/../pyvenv.cfg: a console
    script or venv python imports from the venv's lib), and a `#!/abs/interpreter` of a script."""
    out = [(p, "program")]
    venv = p.parent.parent
    if p.parent.name == "bin" and (venv / "pyvenv.cfg").is_file():
        out.append((venv, "venv"))
    with contextlib.suppress(OSError):
        with open(p, "rb") as f:
            first = f.read(256).split(b"\n", 1)[0]
        # the kernel's reading: the interpreter ends at a space or a tab; its bytes are the path
        words = first[2:].split(None, 1) if first.startswith(b"#!") else []
        if words:
            interp = Path(os.fsdecode(words[0]))
            if interp.is_absolute() and not any(interp.is_relative_to(q) for q, _ in out[1:]):
                out.append((interp, "interpreter"))
    return out


def _why_hidden(p: Path, dirs: Sequence[tuple[Path, str]], files: Sequence[tuple[Path, str]]) -> str | None:
    real = p.resolve() if p.exists() else p
    for f, label in files:
        if real == f.resolve() or p == f:
            return label
    # the innermost hidden folder names it best (a worktree inside HOME: the worktree)
    for d, label in sorted(dirs, key=lambda x: -len(x[0].parts)):
        if d == Path("/"):
            continue
        if p.is_relative_to(d) or real.is_relative_to(d.resolve()):
            return label
    return None


def probe_wrapper(settings: Settings, svc: ServiceSettings) -> Callable[[list[str]], list[str]] | None:
    """For the health gate's `cmd` probe of `svc` (a script in the deployed tree is pushed code
    too): argv → its sandboxed argv, or None when the service runs unsandboxed or has no cmd
    probe. Unlike test and review, a probe keeps the network (reaching the service is its job)
    and sees the deployed worktree read-only as its working directory; the state dir, config,
    HOME, the repos and the other services' worktrees stay hidden. The wrapper raises
    Unavailable when bwrap cannot start: the probe fails, it does not run bare."""
    if svc.sandbox != "bwrap" or not svc.health.cmd:
        return None
    hidden, files = _hidden(settings, shown=Path(svc.worktree))
    tree = Path(svc.worktree).resolve()
    interpreter = _interpreter(hidden)
    # The probe sees the operator's tools as test and review do: its program (a health.sh beside
    # the config) and sandbox_bind, read-only — a good deploy must not fail on a hidden tool.
    shown = [tree, *interpreter, *binds(svc)]
    tools = _shown_tools(settings, svc.health.cmd, hidden, shown)
    policy = Policy(work=None, chdir=tree, hide=tuple(hidden), hide_files=tuple(files),
                    read_only=(tree, *interpreter, *tools, *binds(svc)), network=True)

    def wrap(command: list[str]) -> list[str]:
        return argv(policy, command, bwrap=require(svc.name))

    return wrap


def _interpreter(hidden: Sequence[Path]) -> list[Path]:
    """The Python opskit runs on, read-only, when it lives under a hidden path (pyenv or a venv
    in HOME): test commands written as `{sys.executable} ci/test.py` (the demo's) need it, and
    it is code, not a secret. Never a prefix that holds a hidden path itself."""
    out: list[Path] = []
    # /tmp and /run are fresh tmpfs mounts inside: a venv made there (pipx --global in a
    # container, a test's fresh virtualenv) is as hidden as one in HOME.
    hidden = [*hidden, Path("/tmp"), Path("/run")]
    # opskit's own code too: an editable install's source sits outside the venv (a clone in
    # /tmp, as CI and a newcomer's first try have it), and the demo's test imports opskit.
    package_root = Path(__file__).resolve().parents[2]
    for prefix in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), package_root}:
        under = any(prefix.is_relative_to(h) for h in hidden)
        holds = any(h.is_relative_to(prefix) for h in hidden)
        if under and not holds:
            out.append(prefix)
    return sorted(out)


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _resolved(paths: Sequence[Path]) -> list[Path]:
    # A hidden path must be hidden where it really is: a symlinked state dir is reached both ways.
    out: list[Path] = []
    for p in paths:
        for q in (Path(os.path.abspath(p)), p.resolve()):
            if q not in out:
                out.append(q)
    return out


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Hidden paths, parents before children, nothing that would hide / itself."""
    found = sorted({p for p in paths if p != Path("/")}, key=lambda q: len(q.parts))
    return [p for p in found if _exists(p, dir=True)]


def _exists(p: Path, *, dir: bool) -> bool:
    # Another account's 0700 home above a path (a service account, one of several on the host):
    # this account cannot reach it, so neither can the sandbox; nothing to hide.
    try:
        return p.is_dir() if dir else p.is_file()
    except OSError:
        return False


def account_home() -> Path | None:
    """The account's home: HOME, and the passwd entry's when it differs (sudo -E, cron)."""
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    with contextlib.suppress(KeyError):
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    return None


def homes() -> list[Path]:
    out = [h for h in (account_home(),) if h is not None]
    with contextlib.suppress(KeyError):
        pw = Path(pwd.getpwuid(os.getuid()).pw_dir)
        if pw not in out:
            out.append(pw)
    return out


def git_slice(checkout: Path) -> list[Path]:
    """What git reads in a `git worktree` checkout: its admin dir and the common dir's objects,
    refs and HEAD (read-only). Hooks and the repo config stay hidden."""
    dotgit = checkout / ".git"
    if not dotgit.is_file():
        return []
    # a path's bytes as they are (a repo under a folder whose name is not UTF-8 is still found)
    line = os.fsdecode(dotgit.read_bytes()).strip()
    if not line.startswith("gitdir:"):
        return []
    admin = Path(line.removeprefix("gitdir:").strip())
    if not admin.is_absolute():
        admin = (checkout / admin).resolve()
    out = [admin]
    common_file = admin / "commondir"
    if common_file.is_file():
        rel = os.fsdecode(common_file.read_bytes()).strip()
        common = (admin / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        out += [common / n for n in _GIT_READ if (common / n).exists()]
    return out


@contextlib.contextmanager
def private_copy(checkout: Path, user: pwd.struct_passwd | None = None) -> Iterator[Path]:
    """A writable copy of checkout that the sandboxed command may change at will; removed after.
    The checkout itself (whose .git opskit's own git later uses to remove it) is never exposed.

    `user`: root works for that account. The checkout is the account's, so root must not walk
    it: a folder swapped for a link mid-copy would make root read what the link names, and a
    chown walk over the copy (the account owns each folder as soon as it is chowned) could be
    steered onto /etc. The empty folder is handed over, and the account copies and removes."""
    try:
        parent = Path(tempfile.mkdtemp(prefix="opskit-sandbox-"))
        if user is not None:
            os.chown(parent, user.pw_uid, user.pw_gid)  # still empty, and 0700
    except OSError as e:
        raise OpsError(f"cannot make the sandbox's copy of the checkout in {tempfile.gettempdir()}: "
                       f"{e.strerror}; free space there or set TMPDIR") from None
    work = parent / checkout.name
    try:
        if user is not None:
            r = proc.run(["cp", "-a", "--", str(checkout), str(work)], user=user, capture=True, timeout=600)
            if not r.ok:
                raise OpsError(f"cannot copy the checkout into {parent} for the sandbox as {user.pw_name}: "
                               f"{(r.stderr.strip() or r.describe())[:200]}; free space there or set TMPDIR")
        else:
            try:
                shutil.copytree(checkout, work, symlinks=True)
            except OSError as e:  # shutil.Error (a disk filling up mid-copy) is one too
                raise OpsError(f"cannot copy the checkout into {parent} for the sandbox: "
                               f"{(getattr(e, 'strerror', None) or str(e))[:200]}; free space there or set TMPDIR") from None
        yield work
    finally:
        if user is None:
            _remove(parent)
        else:
            # what the step made read-only is the account's: it opens it up, then removes it
            proc.run(["chmod", "-R", "u+rwX", "--", str(parent)], user=user, timeout=600)
            proc.run(["rm", "-rf", "--", str(parent)], user=user, timeout=600)


def _remove(path: Path) -> None:
    """Remove the copy and everything a step left in it: a folder without write or search
    permission (0o500, 0o000, at any depth) is ours, so it is opened up and emptied. Nothing
    outside `path` is touched: a link is removed, never followed (chmod through a link to a
    folder outside the copy would change that folder), and the folder holding `path` keeps its
    mode (as root, that is the temp dir itself)."""
    top = os.path.abspath(path)
    retried: set[str] = set()

    def unlock(_func: object, p: str, _exc: object) -> None:
        for d in (os.path.dirname(p), p):
            with contextlib.suppress(OSError):
                if (d == top or d.startswith(top + os.sep)) and stat.S_ISDIR(os.lstat(d).st_mode):
                    os.chmod(d, 0o700)
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                os.unlink(p)
            elif p not in retried:  # once per folder: one that stays stuck ends the retries
                retried.add(p)
                shutil.rmtree(p, onerror=unlock)

    shutil.rmtree(top, onerror=unlock)


def find() -> str | None:
    return shutil.which("bwrap")


def available(service: str = "NAME") -> str | None:
    """None when bwrap can start a sandbox here; otherwise one line: the cause and the fix.
    It really starts one (the same namespaces the steps use): a bwrap that exists but cannot
    create a user or network namespace (sysctl, AppArmor, a container) fails here, not later."""
    path = find()
    if path is None:
        return f"bwrap is not installed (not on PATH); {FIX.format(name=service)}"
    why = _start(path)
    if why is None:
        return None
    return f"bwrap cannot start a sandbox ({why}); allow user namespaces on this host or {FIX.format(name=service)}"


@functools.lru_cache(maxsize=8)
def _start(path: str) -> str | None:
    # One real start per bwrap binary per process: a hook runs test and review back to back.
    try:
        res = proc.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                        "--unshare-all", "--die-with-parent", "--new-session", "--", "true"], timeout=15,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, tail_lines=5)
    except OpsError as e:
        return str(e)
    if res.ok:
        return None
    last = next((ln.strip() for ln in reversed(res.tail) if ln.strip()), "")
    how = "timed out" if res.timed_out else f"exit {res.returncode}"
    return f"{how}: {last[:200]}" if last else how


def require(service: str) -> str:
    """The bwrap to run, or Unavailable with the one line to show."""
    why = available(service)
    if why is not None:
        raise Unavailable(why)
    path = find()
    assert path is not None
    return path


__all__ = ["MODES", "Policy", "policy_for", "probe_wrapper", "Unavailable", "argv", "available", "require", "git_slice", "private_copy",
           "homes", "account_home", "programs", "tool_files", "hidden_tools", "HiddenTool", "binds"]
