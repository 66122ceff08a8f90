"""opskit's marked block in a crontab: render, install, uninstall, show.

Everything goes through the real `crontab -l` / `crontab -` of the user running opskit
(or `[cron] user`, root only). Lines outside the block are never touched: the crontab is
split at the markers and put back together byte for byte. The one exception is a missing
newline at the very end, which Debian's crontab refuses to install ("missing newline
before EOF"), so one is added.

Entries run under cron's bare environment, so every path in them is absolute and each
entry sets PATH (and OPSKIT_STATE_DIR) inline for its own command: `PATH=… '/abs/opskit' …`.
The block holds no NAME=value line, because cron applies such a line to every entry after
it, so the user's own lines below the block would run with opskit's PATH (and change back
on uninstall). Blocks written with such lines by older versions are still recognised by
their markers and replaced. Each entry is wrapped in `opskit run-job NAME --` so cron-check
can tell when it stopped running.

run-job and cron-check themselves live in opskit.jobs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import pwd
import re
import shlex
import string
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base import proc, schedule, statefs
from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.config import NAME
from opskit.base.errors import OpsError, UsageError
from opskit.wiring.templates import TEMPLATES

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

BEGIN = "# >>> opskit (managed by `opskit cron install`; edits inside are replaced) >>>"
END = "# <<< opskit <<<"
# Hand-edited markers still count: anything that starts like ours is ours.
_BEGIN_PREFIX = "# >>> opskit"
_END_PREFIX = "# <<< opskit"
TEMPLATE = TEMPLATES / "cron" / "opskit.crontab"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_LINE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
# One leading `NAME=value ` of a command as cron hands it to /bin/sh (before the first
# unescaped %): the per-entry settings opskit's entries start with.
_ASSIGNMENT = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)=((?:'[^']*'|"(?:[^"\\]|\\.)*"|\\.|[^\s'"\\;&|<>()`%])*)(?:\s+|$)""")
_VALUE_OPTIONS = ("--service", "-s", "--ok-exit", "--log")  # run-job's options that take a value


# --- the crontab itself ---------------------------------------------------------------------

def crontab_argv(user: str | None) -> list[str]:
    """`crontab` or `crontab -u USER`; -u is root's privilege, so refuse it early otherwise."""
    if not user:
        return ["crontab"]
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"[cron] user {user!r} does not exist; create it or fix the name") from None
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != user:
        raise UsageError(f"[cron] user = {user!r} needs root (crontab -u); "
                         "run opskit as root or remove the key to use your own crontab")
    return ["crontab", "-u", user]


def read_crontab(user: str | None) -> str | None:
    """The crontab's text, or None when the user has none yet."""
    r = proc.run([*crontab_argv(user), "-l"], capture=True, timeout=30)
    if r.ok:
        return r.stdout
    # Debian: exit 1 and "no crontab for USER" is the normal state of a fresh account.
    if r.returncode == 1 and "no crontab for" in r.stderr:
        return None
    raise OpsError(f"cannot read the crontab: {(r.stderr or r.describe()).strip()}")


def write_crontab(user: str | None, text: str | None) -> None:
    """Install `text` as the whole crontab; None or "" removes the crontab."""
    if not text:
        r = proc.run([*crontab_argv(user), "-r"], capture=True, timeout=30)
        if not r.ok and "no crontab for" not in r.stderr:
            raise OpsError(f"cannot remove the crontab: {(r.stderr or r.describe()).strip()}")
        return
    r = proc.run([*crontab_argv(user), "-"], input=text, capture=True, timeout=30)
    if not r.ok:
        raise OpsError(f"crontab refused the new table: {(r.stderr or r.describe()).strip()}")


# --- splitting at the markers ---------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    before: str
    block: str | None  # the marked block, markers and final newline included
    after: str


def _lines(text: str) -> list[str]:
    """Lines with their newline kept; only \\n counts, as for cron itself."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def split_block(text: str) -> Split:
    """Cut the crontab into (before, opskit block, after); refuse a block we cannot delimit."""
    lines = _lines(text)
    begins = [i for i, ln in enumerate(lines) if ln.startswith(_BEGIN_PREFIX)]
    ends = [i for i, ln in enumerate(lines) if ln.startswith(_END_PREFIX)]
    if not begins and not ends:
        return Split(text, None, "")
    fix = "fix it with `crontab -e` (keep one begin and one end marker, or delete both) and rerun"
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        where = ", ".join(f"line {i + 1}" for i in sorted(begins + ends))
        problem = ("begin marker without an end marker" if begins and not ends else
                   "end marker without a begin marker" if ends and not begins else
                   "opskit block markers out of order or repeated")
        raise UsageError(f"the crontab has a broken opskit block ({problem} at {where}); {fix}")
    b, e = begins[0], ends[0]
    return Split("".join(lines[:b]), "".join(lines[b:e + 1]), "".join(lines[e + 1:]))


def join_block(parts: Split, block: str | None) -> str:
    """The crontab with `block` in place of the old one (appended when there was none)."""
    before = parts.before
    if block and parts.block is None and before and not before.endswith("\n"):
        before += "\n"
    text = before + (block or "") + parts.after
    if text and not text.endswith("\n"):
        text += "\n"  # Debian's crontab refuses a table without a final newline
    return text


# --- rendering ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    name: str
    schedule: str
    args: tuple[str, ...]  # opskit's arguments after --config CONFIG
    service: str | None = None


def entries_for(settings: Settings) -> list[Entry]:
    c = settings.cron
    out = [
        Entry("drift-scan", c.drift_scan, ("drift-scan",)),
        Entry("notify-flush", c.notify_flush, ("notify", "--flush")),
        Entry("cron-check", c.cron_check, ("cron-check",)),
    ]
    for svc in sorted(settings.services.values(), key=lambda s: s.name):
        if svc.pull_mode:
            out.append(Entry(f"deploy-{svc.name}", c.deploy, ("deploy", svc.name), svc.name))
    if any(ch.actionable for ch in settings.channels.values()):
        # Listens 50 s of each minute: a tap takes effect in seconds, and runs never overlap.
        out.append(Entry("inbox", c.inbox, ("inbox", "--wait", "50")))
    out += metrics_entries(settings)
    if any(not r.gate for r in settings.reactions):
        # The safety net of reactions: each event also starts `opskit react` as it is journaled.
        out.append(Entry("react", "* * * * *", ("react", "--quiet")))
    return out


def metrics_entries(settings: Settings) -> list[Entry]:
    """`opskit metrics --textfile PATH` when [opskit] metrics_textfile is set (node_exporter's
    textfile collector reads it on every scrape)."""
    path = settings.monitor.metrics_textfile
    if path is None:
        return []
    return [Entry("metrics", settings.cron.metrics, ("metrics", "--textfile", str(path)))]


def opskit_argv() -> list[str]:
    """How cron should start this opskit: the console script beside our interpreter, if any."""
    # abspath, not resolve(): a venv's python is a symlink whose location is what matters.
    python = os.path.abspath(sys.executable)
    script = Path(python).parent / "opskit"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [python, "-m", "opskit"]


def _cron_quote(arg: str, what: str) -> str:
    if "\n" in arg or "\r" in arg:
        raise UsageError(f"{what} {arg!r} contains a line break, which a crontab cannot hold; rename it")
    # cron turns an unescaped % into a newline before the shell sees the line (crontab(5)).
    return shlex.quote(arg).replace("%", "\\%")


def render_line(entry: Entry, *, runner: Sequence[str], config: Path, log: Path,
                environment: Sequence[tuple[str, str]] = ()) -> str:
    """One entry; `environment` is set inline for this command only, never as a crontab line."""
    q = _cron_quote
    settings = [f"{name}={q(value, name)}" for name, value in environment]
    opskit = [q(a, "interpreter path") for a in runner] + ["--config", q(str(config), "config path")]
    # Options go before NAME: run-job stops parsing options there. Exit 1 is a finding the
    # command notified about itself (drift, a missed job, a failed deploy), not a broken job.
    # No `>> LOG` for the shell: it would follow a link a group member planted at the shared
    # log, as root, and a log root's shell created 0644 stops every other account's line before
    # opskit starts (tests/test_state_links.py). run-job opens the log itself (statefs.open_file) and sends its
    # own and CMD's output there; what fails before that goes to cron's mail.
    wrapper = [*opskit, "run-job", "--ok-exit", "1", "--log", q(str(log), "log path")]
    if entry.service:
        wrapper += ["--service", q(entry.service, "service name")]
    wrapper.append(q(entry.name, "job name"))
    cmd = [*settings, *wrapper, "--", *opskit, *(q(a, "argument") for a in entry.args)]
    return f"{entry.schedule} {' '.join(cmd)}"


def _template() -> string.Template:
    try:
        return string.Template(TEMPLATE.read_text())
    except OSError as e:
        raise OpsError(f"crontab template {TEMPLATE} is unreadable ({e.strerror}); reinstall opskit") from None


def render_block(settings: Settings, *, runner: Sequence[str] | None = None,
                 env: dict[str, str] | None = None) -> tuple[str, list[Entry]]:
    """The full marked block for these settings, and the entries in it."""
    if settings.path is None:
        raise UsageError("cron install needs a config file (the entries pass --config to opskit); "
                         "create opskit.toml or pass --config PATH")
    env = dict(os.environ) if env is None else env
    runner = list(runner or opskit_argv())
    config = Path(os.path.abspath(settings.path))
    log = Path(os.path.abspath(settings.state_dir)) / "logs" / "cron.log"
    entries = entries_for(settings)
    for e in entries:
        problem = schedule.validate_cron(e.schedule)
        if problem:  # config.py validated it already; a Settings built by hand may not be
            raise UsageError(f"schedule {e.schedule!r} for {e.name} is invalid ({problem}); "
                             "fix it in [cron]")
    bindir = str(Path(runner[0]).parent)
    environment = [("PATH", f"{bindir}:{SYSTEM_PATH}")]
    if env.get("OPSKIT_STATE_DIR"):
        environment.append(("OPSKIT_STATE_DIR", os.path.abspath(env["OPSKIT_STATE_DIR"])))
    lines = [render_line(e, runner=runner, config=config, log=log, environment=environment) for e in entries]
    _cron_quote(str(config), "config path")
    text = _template().substitute(config=str(config), log=str(log), entries="\n".join(lines))
    if not text.endswith("\n"):
        text += "\n"
    for n, line in enumerate(_lines(text), start=1):
        if _ENV_LINE.match(line):  # a hand-edited template; cron would apply it to the user's lines
            raise OpsError(f"crontab template {TEMPLATE} line {n} sets a variable ({line.strip()!r}), "
                           "which cron would apply to every line after the block; remove it or reinstall opskit")
    return text, entries


# --- reading entries back -------------------------------------------------------------------

@dataclass(frozen=True)
class CronLine:
    lineno: int
    schedule: str  # five fields (macros expanded); "" for @reboot
    command: str  # as written, inline NAME=value settings included
    job: str | None  # the run-job NAME, when the line is wrapped
    service: str | None
    in_block: bool
    env: tuple[tuple[str, str], ...] = ()  # the command's leading NAME=value settings, unquoted
    program: str = ""  # the command after those settings, as written


def split_assignments(command: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """(the leading `NAME=value` settings, the rest as written) of a crontab command.

    opskit's entries carry PATH and OPSKIT_STATE_DIR this way; values come back shell-unquoted
    with cron's \\% turned into %. A value the shell would expand ($HOME) is kept as written.
    """
    env: list[tuple[str, str]] = []
    pos = 0
    while m := _ASSIGNMENT.match(command, pos):
        if m.end() == pos:
            break
        raw = m.group(2).replace("\\%", "%")
        try:
            words = shlex.split(raw) if raw else [""]
        except ValueError:
            break
        env.append((m.group(1), words[0] if len(words) == 1 else raw))
        pos = m.end()
    return tuple(env), command[pos:]


def _run_job_target(command: str) -> tuple[str | None, str | None]:
    """(NAME, --service) of `… run-job [--service S] NAME -- …`, or (None, None)."""
    # What cron hands the shell: up to the first unescaped %, with \% turned back into %.
    cmd = re.split(r"(?<!\\)%", command, maxsplit=1)[0].replace("\\%", "%")
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None, None
    if "run-job" not in words:
        return None, None
    rest = words[words.index("run-job") + 1:]
    service = None
    while rest and rest[0].startswith("-") and rest[0] != "--":
        opt, _, value = rest.pop(0).partition("=")
        if opt in _VALUE_OPTIONS and not value and rest:
            value = rest.pop(0)
        if opt in ("--service", "-s"):
            service = value
    if rest and rest[0] != "--" and NAME.match(rest[0]):
        return rest[0], service
    return None, None


def parse_crontab(text: str) -> tuple[list[CronLine], list[str]]:
    """Every job line in a crontab, and a warning for each line opskit cannot read."""
    found: list[CronLine] = []
    warnings: list[str] = []
    inside = False
    for n, raw in enumerate(_lines(text), start=1):
        line = raw.rstrip("\n")
        if line.startswith(_BEGIN_PREFIX):
            inside = True
            continue
        if line.startswith(_END_PREFIX):
            inside = False
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or _ENV_LINE.match(line):
            continue
        where = "opskit block" if inside else "crontab"
        if stripped.startswith("@"):
            macro, _, command = stripped.partition(" ")
            if macro.lower() == "@reboot":
                expr = ""
            elif macro.lower() in schedule.MACROS:
                expr = schedule.MACROS[macro.lower()]
            else:
                warnings.append(f"{where} line {n}: unknown schedule {macro!r}; not watched")
                continue
        else:
            fields = stripped.split(None, 5)
            if len(fields) < 6:
                warnings.append(f"{where} line {n}: not a cron entry (expected five schedule fields "
                                "and a command); not watched")
                continue
            expr, command = " ".join(fields[:5]), fields[5]
            problem = schedule.validate_cron(expr)
            if problem:
                warnings.append(f"{where} line {n}: schedule {expr!r} cannot be read ({problem}); "
                                "not watched")
                continue
        command = command.strip()
        job, service = _run_job_target(command)
        env, program = split_assignments(command)
        found.append(CronLine(n, expr, command, job, service, inside, env, program))
    return found, warnings


# --- install / uninstall / show -------------------------------------------------------------

@dataclass
class CronResult:
    action: str  # installed | updated | unchanged | removed | absent
    user: str
    changed: bool
    dry_run: bool
    block: str | None = None
    entries: list[Entry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "user": self.user, "changed": self.changed,
                "dry_run": self.dry_run, "block": self.block,
                "entries": [{"name": e.name, "schedule": e.schedule, "service": e.service}
                            for e in self.entries]}


def _user_name(settings: Settings) -> str:
    return settings.cron.user or pwd.getpwuid(os.geteuid()).pw_name


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Two installs at once would each write back the table they read: serialize them."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # Never through a planted link (tests/test_state_links.py); shared when created, never chmodded after.
        f = os.fdopen(statefs.open_file(state_dir / "cron.lock", state_dir, os.O_RDONLY | os.O_CREAT,
                                         flock_only=True), "rb")
    except OSError as e:
        raise UsageError(f"state dir {state_dir}: {e.strerror}; set OPSKIT_STATE_DIR to a writable "
                         "folder") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def install(settings: Settings, journal: Journal | None = None, *, dry_run: bool = False,
            runner: Sequence[str] | None = None, clock: Clock = SYSTEM) -> CronResult:
    """Put opskit's block into the crontab, replacing the one that is there."""
    block, entries = render_block(settings, runner=runner)
    user = settings.cron.user
    with _locked(settings.state_dir):
        current = read_crontab(user)
        parts = split_block(current or "")
        new = join_block(parts, block)
        changed = new != (current or "")
        action = "unchanged" if not changed else ("updated" if parts.block is not None else "installed")
        if changed and not dry_run:
            statefs.mkdir(settings.state_dir / "logs", settings.state_dir)
            write_crontab(user, new)
    if journal is not None and not dry_run and (changed or journal.kv_get("cron-check", "installed") is None):
        # cron_check_health measures "cron-check stopped running" from here until its first run.
        journal.kv_set("cron-check", "installed", {"ts": iso(clock.now()), "user": _user_name(settings)})
    return CronResult(action, _user_name(settings), changed, dry_run, block, entries)


def uninstall(settings: Settings, journal: Journal | None = None, *, dry_run: bool = False) -> CronResult:
    """Take opskit's block out of the crontab; every other line stays as it is."""
    user = settings.cron.user
    with _locked(settings.state_dir):
        current = read_crontab(user)
        parts = split_block(current or "")
        if parts.block is None:
            return CronResult("absent", _user_name(settings), False, dry_run)
        new = join_block(parts, None)
        if not dry_run:
            write_crontab(user, new)
    if journal is not None and not dry_run:
        # Nothing schedules cron-check any more: its silence is no longer news.
        journal.kv_delete("cron-check", "installed")
        journal.kv_delete("cron-check", "last")
    return CronResult("removed", _user_name(settings), True, dry_run, parts.block)


@dataclass
class ShownEntry:
    name: str | None
    schedule: str
    command: str  # without the inline settings, which are in env
    next_run: dt.datetime | None
    line: int
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self, tz: dt.tzinfo) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule, "command": self.command,
                "env": self.env, "line": self.line,
                "next_run": iso(self.next_run) if self.next_run else None,
                "next_run_local": self.next_run.astimezone(tz).isoformat() if self.next_run else None}


@dataclass
class ShowResult:
    user: str
    installed: bool
    timezone: str
    entries: list[ShownEntry]
    warnings: list[str]
    tz: dt.tzinfo

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "installed": self.installed, "timezone": self.timezone,
                "entries": [e.to_dict(self.tz) for e in self.entries], "warnings": self.warnings}


def show(settings: Settings, clock: Clock = SYSTEM, text: str | None = None) -> ShowResult:
    """The entries in opskit's block with their next run (cron's local time zone)."""
    if text is None:
        text = read_crontab(settings.cron.user) or ""
    parts = split_block(text)
    tz = schedule.local_zone()
    entries: list[ShownEntry] = []
    lines, warnings = parse_crontab(text)
    now = clock.now()
    for ln in lines:
        if not ln.in_block:
            continue
        nxt = schedule.next_run(ln.schedule, now, tz) if ln.schedule else None
        entries.append(ShownEntry(ln.job, ln.schedule, ln.program or ln.command, nxt, ln.lineno, dict(ln.env)))
    return ShowResult(_user_name(settings), parts.block is not None, str(tz), entries,
                      [w for w in warnings if w.startswith("opskit block")], tz)



def installed_entries(settings: Settings) -> list[CronLine]:
    """The job lines inside opskit's block ([] when none is installed), for `opskit doctor`."""
    text = read_crontab(settings.cron.user) or ""
    split_block(text)  # a broken block is an error here too
    return [ln for ln in parse_crontab(text)[0] if ln.in_block]
