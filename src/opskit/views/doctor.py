"""opskit doctor: is this host set up so that opskit can keep its services alive?

Each check is cheap and changes nothing; a failing one says what to do about it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opskit.base import bwrap, safety, statefs
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import OpsError, UsageError, redact
from opskit.deploy import service_logs
from opskit.git import repo as gitrepo
from opskit.git.repo import Git
from opskit.notify import decisions
from opskit.storage.journal import Journal
from opskit.storage.recover import quick_check
from opskit.views.reactions import needs_attention
from opskit.wiring import cron, crond, hooks, sudoers


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    severity: str = "error"  # error | warning

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    # An account outside the state dir's group can check nothing of this host: the one line of
    # every other command (who it is, the group, usermod), not a crash in the first check that
    # opens something (tests/test_root_paths.py).
    blocked = statefs.not_writable(settings.state_dir)
    if blocked:
        raise UsageError(blocked)
    checks: list[Check] = [
        Check("python", sys.version_info >= (3, 11), sys.version.split()[0], "use Python 3.11 or newer"),
        _git_version(),
        _journal_integrity(settings.state_dir),
        _state_dir(settings.state_dir),
        _config(settings),
        _crontab_binary(),
    ]
    if settings.path is not None:
        checks.append(_cron_block(settings))
    if settings.fleet is not None:
        checks.append(_guard("fleet journal", lambda: _fleet(settings)))
    checks.append(_channels(settings))
    if settings.reactions:
        checks.extend(_reactions(settings))
    checks.extend(Check(what, False, problem, fix, severity="warning")
                  for what, problem, fix in decisions.setup_problems(settings))
    checks.append(_guard("root-owned files", lambda: _unsafe_files(settings)))
    for svc in settings.services.values():
        checks.extend(_service(settings, svc))
    return checks


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except OpsError as e:
        return Check(name, False, e.message)
    except Exception as e:  # doctor reports, it never crashes on a broken host
        return Check(name, False, redact(f"{type(e).__name__}: {e}"))


def _git_version() -> Check:
    if shutil.which("git") is None:
        return Check("git", False, "git not found", "apt-get install git")
    r = gitrepo.version()
    version = r.stdout.strip().removeprefix("git version ")
    parts = version.split(".")
    ok = len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() and (int(parts[0]), int(parts[1])) >= (2, 30)
    return Check("git", ok, version, "opskit needs git 2.30 or newer")


def _journal_integrity(path: Path) -> Check:
    """SQLite's quick_check: a journal with garbage pages still counts its events."""
    def check() -> Check:
        db = path / "journal.db"
        problems = quick_check(db)
        if problems:
            return Check("journal", False, f"database corrupt: {db}: {problems[0]}"[:300],
                         "opskit journal recover  (keeps the damaged file aside, rebuilds from what is readable)")
        return Check("journal", True, f"{db} passes quick_check")

    return _guard("journal", check)


def _state_dir(path: Path) -> Check:
    def check() -> Check:
        j = Journal(path)
        n = j.event_count()
        writable = os.access(path, os.W_OK)
        return Check("state dir", writable, f"{path} ({n} events)",
                     f"make {path} writable for this user")

    return _guard("state dir", check)


def _fleet(settings: Settings) -> Check:
    """The shared PostgreSQL journal: reachable now, its schema current, this host's events
    forwarded. Unreachable: since when (this host's record) and how to bring it back."""
    from opskit.storage import fleet_read  # only a host with a fleet journal loads psycopg
    from opskit.storage.fleet import Unreachable  # (and the fleet module with it)

    assert settings.fleet is not None
    journal = Journal(settings.state_dir, fleet=settings.fleet)
    fleet = journal.fleet
    assert fleet is not None
    parts = urlsplit(fleet.url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"  # never the password
    try:
        conn = fleet.open()
        conn.close()
    except Unreachable as e:  # doctor changes nothing: since when is this host's own record
        down = fleet_read.unreachable(journal) or {"since": f"{journal.now()} (this check; no earlier record)"}
        fix = ("run `opskit journal migrate`" if "journal migrate" in str(e) else
               f"start PostgreSQL at {where} or let this host reach it (`pg_isready -h {parts.hostname or 'localhost'} "
               f"-p {parts.port or 5432}`; check [opskit] journal and its password in .env); meanwhile events "
               "wait in this host's journal and are forwarded once it is back (`opskit journal sync` at once)")
        return Check("fleet journal", False, f"{where} unreachable since {down.get('since')}: {e}", fix)
    pending = fleet_read.pending(fleet, journal)
    return Check("fleet journal", True, f"{where} as host {fleet.host}: schema current, "
                 + (f"{pending} event(s) not forwarded yet (the next event or `opskit journal sync` sends them)"
                    if pending else "every event forwarded"))


def _config(settings: Settings) -> Check:
    if settings.path is None:
        return Check("config", False, "no opskit.toml found",
                     "write one (see README) or pass --config", severity="warning")
    return Check("config", True, f"{settings.path}: {len(settings.services)} service(s), "
                 f"{len(settings.channels)} channel(s)")


def _crontab_binary() -> Check:
    found = shutil.which("crontab")
    return Check("crontab", found is not None, found or "not found",
                 "apt-get install cron (and make sure the cron daemon runs)")


def _cron_block(settings: Settings) -> Check:
    def check() -> Check:
        system = [ln for ln in crond.watched_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if system:
            return Check("cron block", True, f"{crond.path()}: {len(system)} opskit entr"
                         f"{'y' if len(system) == 1 else 'ies'}")
        entries = cron.installed_entries(settings)
        return Check("cron block", bool(entries), f"{len(entries)} opskit entr{'y' if len(entries) == 1 else 'ies'}",
                     "run `opskit cron install` (or, on a server, `opskit cron install --system`)",
                     severity="warning")

    return _guard("cron block", check)


def _reactions(settings: Settings) -> list[Check]:
    """Each [[reaction]] that `opskit status` would name (failing, or far behind), one warning
    each with where to look; one passing line when none is."""
    def rows() -> list[Check]:
        from opskit.reactions.dispatch import status  # only configs with [[reaction]] tables

        found = status(settings, Journal(settings.state_dir))
        out = [Check(f"reaction {r['name']}", False, why,
                     "opskit reactions  (its last result and why); opskit react  (runs what waits, after its backoff)",
                     severity="warning")
               for r in found if (why := needs_attention(r))]
        return out or [Check("reactions", True, f"{len(found)} configured, none failing or behind")]

    try:
        return rows()
    except OpsError as e:
        return [Check("reactions", False, e.message)]
    except Exception as e:  # as _guard: doctor reports, it never crashes on a broken host
        return [Check("reactions", False, redact(f"{type(e).__name__}: {e}"))]


def _channels(settings: Settings) -> Check:
    if not settings.channels:
        return Check("notify", False, "no channel configured: failures would only reach the journal",
                     "add a [notify.NAME] table and [opskit] notify = [\"NAME\"]", severity="warning")
    return Check("notify", True, ", ".join(f"{c.name} ({c.type})" for c in settings.channels.values()))


def _service(settings: Settings, svc: ServiceSettings) -> list[Check]:
    name = f"service {svc.name}"
    out: list[Check] = []
    def repo_check() -> Check:
        if svc.pull_mode:
            return Check(f"{name}: repo", True, f"{redact(svc.repo)} (pull mode)")
        repo = Git(svc.repo)
        ok = repo.is_repo() and repo.is_bare()
        return Check(f"{name}: repo", ok, svc.repo, "git init --bare the repo, or fix `repo`")

    def worktree_check() -> Check:
        wt = Git(svc.worktree)
        if wt.is_repo():
            branch = wt.current_branch()
            return Check(f"{name}: worktree", branch == svc.branch, f"{svc.worktree} on {branch or 'detached HEAD'}",
                         f"check out {svc.branch} in {svc.worktree}")
        return Check(f"{name}: worktree", False, f"{svc.worktree} is not a git checkout",
                     f"git clone {svc.repo} {svc.worktree}")

    # Guarded: git's "dubious ownership" answer (doctor run by an operator) is a finding, not a crash.
    out.append(_guard(f"{name}: repo", repo_check))
    out.append(_guard(f"{name}: worktree", worktree_check))
    out.append(Check(f"{name}: deploy", bool(svc.deploy), svc.deploy or "no deploy command",
                     "set deploy = \"…\"", severity="warning"))
    out.append(Check(f"{name}: health", svc.health.configured,
                     svc.health.url or svc.health.tcp or svc.health.cmd or "no probe: deploys are not gated",
                     "add [service.NAME.health] url/tcp/cmd"))
    out.append(_guard(f"{name}: hooks", lambda: _hooks(settings, svc)))
    out.append(_guard(f"{name}: logs", lambda: _logs(svc)))
    if svc.test or svc.review or svc.health.cmd:
        out.append(_guard(f"{name}: sandbox", lambda: _sandbox(svc)))
    if svc.sandbox == "bwrap" and (svc.test or svc.review or svc.sandbox_bind):
        out.append(_guard(f"{name}: sandbox tools", lambda: _sandbox_tools(settings, svc)))
    out.append(_guard(f"{name}: sudo", lambda: _sudo(svc)))
    return out


def _logs(svc: ServiceSettings) -> Check:
    """Where a failure's message gets the service's own last lines (deploy/service_logs.py)."""
    src = service_logs.source(svc, 0)
    return Check(f"service {svc.name}: logs", src.argv is not None, src.label,
                 f"set [service.{svc.name}] logs = \"COMMAND\" (e.g. \"tail -n 200 app.log\"): a failure's "
                 "message then shows the service's own last lines", severity="warning")


def _sandbox(svc: ServiceSettings) -> Check:
    """Before any push: will the chain be able to run pushed code, and how?"""
    name = f"service {svc.name}: sandbox"
    if svc.sandbox == "none":
        return Check(name, False, "none: test and review run pushed code unsandboxed, with this account's "
                     "files, secrets and network", f"set sandbox = \"bwrap\" under [service.{svc.name}]",
                     severity="warning")
    why = bwrap.available(svc.name)
    if why is not None:
        return Check(name, False, why.split("; ", 1)[0], why.split("; ", 1)[-1])
    net = "network allowed (sandbox_network = true)" if svc.sandbox_network else "no network"
    return Check(name, True, f"bwrap ({bwrap.find()}): test and review see a read-only system, a private "
                 f"copy of the checkout, {net}")


def _sandbox_tools(settings: Settings, svc: ServiceSettings) -> Check:
    """Each step's program is visible inside the sandbox (bwrap.hidden_tools), and each
    sandbox_bind path exists: a tool hidden by the sandbox is found here, not at 3 am."""
    name = f"service {svc.name}: sandbox tools"
    found: list[str] = []
    fixes: list[str] = []
    for what, command in (("test", svc.test), ("review", svc.review)):
        for h in bwrap.hidden_tools(settings, svc, command):
            found.append(f"{what} program {h.program} {h.why}")
            fixes.append(h.fix(svc.name))
    severity = "error" if found else "warning"  # a bind not there yet: a warning, nothing hidden yet
    missing = [b for b in svc.sandbox_bind if not os.path.lexists(b)]
    if missing:
        found.append(f"sandbox_bind {', '.join(missing)} does not exist")
        fixes.append(f"create it or remove it from [service.{svc.name}] sandbox_bind")
    if found:
        return Check(name, False, "; ".join(found), "; ".join(fixes), severity=severity)
    shown = ", ".join(svc.sandbox_bind)
    return Check(name, True, "every step's program is visible inside" + (f"; shown read-only: {shown}" if shown else ""))


def _sudo(svc: ServiceSettings) -> Check:
    found = sudoers.check(svc)
    if found is None:
        return Check(f"service {svc.name}: sudo", True, "deploy does not use sudo")
    ok, detail, fix = found
    return Check(f"service {svc.name}: sudo", ok, detail, fix)


def _unsafe_files(settings: Settings) -> Check:
    paths = [settings.path, settings.path.parent / ".env"] if settings.path else []
    paths += [hooks.templates_dir() / n for n in (*hooks.REPO_HOOKS, *hooks.WORKTREE_HOOKS)]
    problems = [p for p in (safety.writable_by_others(f) for f in paths) if p]
    return Check("root-owned files", not problems, "; ".join(problems) or "config, .env and hook templates "
                 "are writable by root only", "chown root and chmod go-w the files named")


def _hooks(settings: Settings, svc: ServiceSettings) -> Check:
    states = hooks.hook_states(settings, svc)
    bad = [f"{h.name} {h.state}" for h in states if h.state != "installed"]
    override = hooks.hooks_path_override(svc)
    detail = ", ".join(bad + list(override)) or f"{len(states)} installed"
    return Check(f"service {svc.name}: hooks", not bad and not override, detail,
                 f"run `opskit hooks install {svc.name}`")
