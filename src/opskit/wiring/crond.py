"""`opskit cron install --system`: opskit's entries as /etc/cron.d/opskit, one account per line.

A server's root cron runs opskit for every service, but root must not do a service's work
itself (accounts.py): the cron.d format has a user field, so each service's drift-scan (and
pull-mode deploy) runs as that service's account, and only the host-wide jobs (notify --flush,
cron-check) run as root ([cron] user, when set). The file is opskit's alone — it is written
whole, atomically, root:root 0644 as cron requires — and `cron uninstall --system` removes it
and nothing else. Entries are rendered by cron.render_line, like the crontab block's, so each
runs under cron's bare environment with absolute paths and its PATH and OPSKIT_STATE_DIR inline.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from opskit.base import accounts, schedule, statefs
from opskit.base.atomic import replace_file
from opskit.base.errors import OpsError, UsageError
from opskit.wiring import cron

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

MARKER = "# opskit cron.d file (managed by `opskit cron install --system`; edits are replaced)"


def path() -> Path:
    """/etc/cron.d/opskit; OPSKIT_CRON_D moves it (tests, or a host whose cron reads elsewhere)."""
    return Path(os.environ.get("OPSKIT_CRON_D") or "/etc/cron.d/opskit")


@dataclass(frozen=True)
class SystemEntry:
    entry: cron.Entry
    user: str


def entries_for(settings: Settings) -> list[SystemEntry]:
    host_user = settings.cron.user or "root"
    out = [SystemEntry(cron.Entry("notify-flush", settings.cron.notify_flush, ("notify", "--flush")), host_user),
           SystemEntry(cron.Entry("cron-check", settings.cron.cron_check, ("cron-check",)), host_user)]
    if any(ch.actionable for ch in settings.channels.values()):
        # Taps on a phone come back only through `opskit inbox`: without it the buttons do nothing.
        out.append(SystemEntry(cron.Entry("inbox", settings.cron.inbox, ("inbox", "--wait", "50")), host_user))
    out += [SystemEntry(e, host_user) for e in cron.metrics_entries(settings)]
    if any(not r.gate for r in settings.reactions):
        # As root (or [cron] user): the dispatcher runs each service's reaction as its account.
        out.append(SystemEntry(cron.Entry("react", "* * * * *", ("react", "--quiet")), host_user))
    for svc in sorted(settings.services.values(), key=lambda s: s.name):
        pw = accounts.service_account(svc)
        if pw is None:
            raise UsageError(f"service {svc.name}: cannot tell which account it runs as (repo "
                             f"{svc.repo} not found and no user set); set [service.{svc.name}] user")
        out.append(SystemEntry(cron.Entry(f"drift-scan-{svc.name}", settings.cron.drift_scan,
                                          ("drift-scan", svc.name), svc.name), pw.pw_name))
        if svc.pull_mode:
            out.append(SystemEntry(cron.Entry(f"deploy-{svc.name}", settings.cron.deploy,
                                              ("deploy", svc.name), svc.name), pw.pw_name))
    return out


def render(settings: Settings, runner: Sequence[str] | None = None) -> tuple[str, list[SystemEntry]]:
    if settings.path is None:
        raise UsageError("cron install --system needs a config file (the entries pass --config); "
                         "pass --config /etc/opskit/opskit.toml")
    runner = list(runner or cron.opskit_argv())
    config = Path(os.path.abspath(settings.path))
    state = Path(os.path.abspath(settings.state_dir))
    log = state / "logs" / "cron.log"
    environment = [("PATH", f"{Path(runner[0]).parent}:{cron.SYSTEM_PATH}"), ("OPSKIT_STATE_DIR", str(state))]
    entries = entries_for(settings)
    lines = [MARKER,
             f"# Schedules come from [cron] in {config}; change them there and rerun "
             "`opskit cron install --system`.",
             "# Each service's work runs as its account; output is appended to " + str(log) + "."]
    for se in entries:
        problem = schedule.validate_cron(se.entry.schedule)
        if problem:
            raise UsageError(f"schedule {se.entry.schedule!r} for {se.entry.name} is invalid ({problem}); "
                             "fix it in [cron]")
        line = cron.render_line(se.entry, runner=runner, config=config, log=log, environment=environment)
        command = line[len(se.entry.schedule) + 1:]
        lines.append(f"{se.entry.schedule} {se.user} {command}")
    return "\n".join(lines) + "\n", entries


@dataclass
class SystemCronResult:
    action: str  # installed | updated | unchanged | removed | absent
    path: Path
    changed: bool
    dry_run: bool
    text: str | None
    entries: list[SystemEntry]

    @property
    def user(self) -> str:  # for the messages cron's commands print
        return "per entry, " + str(self.path)


def install(settings: Settings, journal: Journal | None = None, *, dry_run: bool = False,
            runner: Sequence[str] | None = None) -> SystemCronResult:
    if os.geteuid() != 0 and not os.environ.get("OPSKIT_CRON_D"):
        raise UsageError(f"cron install --system writes {path()}: run it as root (sudo opskit cron install --system)")
    text, entries = render(settings, runner)
    target = path()
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} does not exist, so cron reads no file there: install cron "
                         "(apt-get install cron) or set OPSKIT_CRON_D to the file your cron reads")
    current = _read(target)
    if current is not None and not current.startswith(MARKER):
        raise UsageError(f"{target} exists and was not written by opskit; move it aside and rerun")
    changed = current != text
    action = "unchanged" if not changed else ("updated" if current is not None else "installed")
    if changed and not dry_run:
        _shared_log(settings.state_dir / "logs" / "cron.log", settings.state_dir)
        try:
            replace_file(target, text, mode=0o644)  # cron ignores a cron.d file that others can write
        except OSError as e:
            raise OpsError(f"cannot write {target} ({e.strerror}); free space or fix its folder's "
                           "permissions, then rerun") from None
    if journal is not None and not dry_run and (changed or journal.kv_get("cron-check", "installed") is None):
        # As cron.install: cron-check's silence counts from here until its first run.
        from opskit.base.clock import SYSTEM, iso

        journal.kv_set("cron-check", "installed", {"ts": iso(SYSTEM.now()), "user": str(target)})
    return SystemCronResult(action, target, changed, dry_run, text, entries)


def _shared_log(log: Path, state_dir: Path) -> None:
    """Created here, shared: entries running as different accounts append to one log (each
    line's run-job opens it by statefs' rule, never the shell)."""
    try:
        os.close(statefs.open_file(log, state_dir, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
        return
    except statefs.Unsafe:
        pass
    # Until abd47b7 root's `>> LOG` created it 0644, and every other account's line then failed
    # in the shell. A world-readable single-link file of ours holds nothing the group may not
    # read, so it is given the group's write; anything else stays refused (exit 2, the fix).
    fd = statefs.open_file(log, state_dir, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or not st.st_mode & stat.S_IROTH:
            raise statefs.Unsafe(log, f"is not writable by the state dir's group (mode {stat.S_IMODE(st.st_mode):04o})")
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP)
    finally:
        os.close(fd)


def uninstall(journal: Journal | None = None, *, dry_run: bool = False) -> SystemCronResult:
    target = path()
    current = _read(target)
    if current is None:
        return SystemCronResult("absent", target, False, dry_run, None, [])
    if not current.startswith(MARKER):
        raise UsageError(f"{target} was not written by opskit; remove it by hand if it should go")
    if not dry_run:
        target.unlink()
        if journal is not None:
            journal.kv_delete("cron-check", "installed")
            journal.kv_delete("cron-check", "last")
    return SystemCronResult("removed", target, True, dry_run, current, [])


def as_crontab(text: str) -> str:
    """The file with each entry's user field taken out, so cron.show can read it like a crontab
    (between the markers it expects)."""
    out = [cron.BEGIN]
    for line in text.splitlines():
        fields = line.split(None, 6)
        if line.startswith("#") or not line.strip() or len(fields) < 7:
            continue
        out.append(" ".join(fields[:5]) + " " + fields[6])
    out.append(cron.END)
    return "\n".join(out) + "\n"


def watched_text() -> str:
    """The cron.d file's entries as crontab lines (no markers), for cron-check to watch; "" when
    there is no file or it cannot be read."""
    try:
        text = _read(path())
    except UsageError:
        return ""
    if not text:
        return ""
    lines = as_crontab(text).splitlines()[1:-1]
    return "".join(ln + "\n" for ln in lines)


def users(text: str) -> list[str]:
    return [ln.split(None, 6)[5] for ln in text.splitlines()
            if ln.strip() and not ln.startswith("#") and len(ln.split(None, 6)) == 7]


def show(settings: Settings) -> cron.ShowResult | None:
    """cron.show for the cron.d file; None when there is none."""
    text = _read(path())
    if text is None:
        return None
    result = cron.show(settings, text=as_crontab(text))
    result.user = f"{path()} ({', '.join(dict.fromkeys(users(text)))})"
    return result


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror})") from None
