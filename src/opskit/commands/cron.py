"""opskit cron install|uninstall|show, run-job, cron-check."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from opskit.base import statefs
from opskit.base.errors import redact
from opskit.commands import _common

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal
    from opskit.wiring.cron import CronResult
    from opskit.wiring.crond import SystemCronResult


def _print_change(result: CronResult, as_json: bool) -> None:
    if as_json:
        _common.print_json(result.to_dict())
        return
    out = _common.console()
    verb = {"installed": "installed", "updated": "updated", "unchanged": "already up to date",
            "removed": "removed", "absent": "not present"}[result.action]
    prefix = "would be " if result.dry_run and result.changed else ""
    out.print(f"opskit crontab block {prefix}{verb} (user {result.user})", markup=False)
    if result.dry_run and result.block:
        sys.stdout.write(result.block)


def _print_system(result: SystemCronResult, as_json: bool) -> None:
    if as_json:
        _common.print_json({"action": result.action, "path": str(result.path), "changed": result.changed,
                            "dry_run": result.dry_run, "text": result.text,
                            "entries": [{"name": e.entry.name, "user": e.user, "schedule": e.entry.schedule,
                                         "service": e.entry.service} for e in result.entries]})
        return
    verb = {"installed": "installed", "updated": "updated", "unchanged": "already up to date",
            "removed": "removed", "absent": "not present"}[result.action]
    prefix = "would be " if result.dry_run and result.changed else ""
    _common.console().print(f"{result.path} {prefix}{verb}", markup=False)
    for e in result.entries:
        _common.console().print(f"  {e.entry.name:24} as {e.user:12} {e.entry.schedule}", markup=False)
    if result.dry_run and result.text:
        sys.stdout.write(result.text)


def register(app: typer.Typer) -> None:
    cron_app = typer.Typer(help="Manage opskit's marked block in the crontab.\n\n"
                           "Example: opskit cron install && opskit cron show", no_args_is_help=True)
    app.add_typer(cron_app, name="cron")

    @cron_app.command("install")
    def install(
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the block; change nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        system: bool = typer.Option(False, "--system", help="Write /etc/cron.d/opskit (root): each "
                                    "service's work runs as its account."),
    ) -> None:
        """Install or refresh opskit's block (drift-scan, notify --flush, cron-check, pull deploys).

        Lines outside the block are kept byte for byte; running it twice leaves one block.

        Example: opskit --config /etc/opskit/opskit.toml cron install --dry-run
        """
        from opskit.wiring import cron

        settings = _common.settings()
        if system:
            from opskit.wiring import crond

            _print_system(crond.install(settings, None if dry_run else _common.journal(), dry_run=dry_run), as_json)
            return
        journal = None if dry_run else _common.journal()
        _print_change(cron.install(settings, journal, dry_run=dry_run), as_json)

    @cron_app.command("uninstall")
    def uninstall(
        dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; change nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        system: bool = typer.Option(False, "--system", help="Remove /etc/cron.d/opskit (only that file)."),
    ) -> None:
        """Remove opskit's block from the crontab; every other line stays as it is.

        Example: opskit cron uninstall
        """
        from opskit.wiring import cron

        if system:
            from opskit.wiring import crond

            _print_system(crond.uninstall(None if dry_run else _common.journal(), dry_run=dry_run), as_json)
            return
        settings = _common.settings()
        journal = None if dry_run else _common.journal()
        _print_change(cron.uninstall(settings, journal, dry_run=dry_run), as_json)

    @cron_app.command("show")
    def show(as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
             system: bool = typer.Option(False, "--system", help="Read /etc/cron.d/opskit only.")) -> None:
        """List the entries in opskit's block with each one's next run (cron's local time zone).

        Reads the crontab's block, or /etc/cron.d/opskit when the crontab has none (--system:
        that file only). Exit 1 when neither is installed.

        Example: opskit cron show --json
        """
        from opskit.wiring import cron, crond

        settings = _common.settings()
        result = None if system else cron.show(settings)
        if result is None or not result.installed:
            result = crond.show(settings) or result
        if result is None:
            result = cron.show(settings, text="")
            result.user = str(crond.path())
        if as_json:
            _common.print_json(result.to_dict())
        else:
            out = _common.console()
            if not result.installed:
                out.print(f"no opskit block in the crontab of {result.user} "
                          "(install it with `opskit cron install`)", markup=False)
            else:
                from rich.table import Table

                table = Table(title=f"opskit crontab block (user {result.user}, {result.timezone})",
                              title_justify="left")
                for col in ("job", "schedule", "next run", "command"):
                    table.add_column(col, overflow="fold")
                for e in result.entries:
                    nxt = e.next_run.astimezone(result.tz).strftime("%Y-%m-%d %H:%M %Z") if e.next_run else "-"
                    cmd = e.command if len(e.command) <= 60 else e.command[:57] + "..."
                    table.add_row(e.name or "-", e.schedule, nxt, cmd)
                out.print(table)
            for w in result.warnings:
                _common.err_console().print(f"warning: {w}", markup=False)
        _common.exit_with(0 if result.installed else 1)

    @app.command("run-job", context_settings={"allow_interspersed_args": False,
                                              "ignore_unknown_options": True})
    def run_job(
        name: str = typer.Argument(..., help="The job's name (what cron-check and events call it)."),
        cmd: list[str] = typer.Argument(None, metavar="-- CMD [ARGS]...", help="The command to run."),
        service: str = typer.Option(None, "--service", "-s",
                                    help="The service the job belongs to (its notify channels)."),
        ok_exit: list[int] = typer.Option(None, "--ok-exit", metavar="CODE",
                                          help="Another exit code that counts as success (repeatable)."),
        log: str = typer.Option(None, "--log", metavar="PATH",
                                help="Append our and CMD's output to PATH in the state dir (cron's lines)."),
    ) -> None:
        """Run CMD as job NAME: journal job.start/ok/fail, notify once per failure streak.

        CMD's output passes through and its exit code is ours. A run that starts while an
        earlier one still runs goes ahead; the overlap is journaled and reported on stderr.
        Options for run-job go before NAME.

        Example: opskit run-job nightly-backup -- /usr/local/bin/backup.sh --full
        """
        from opskit.jobs.run_job import run_job as core

        settings = _common.settings()
        refused = None
        if log:  # before the journal opens: its errors belong in the log too
            try:
                statefs.redirect_output(log, settings.state_dir)
            except statefs.Unsafe as e:
                # One planted link must not stop every cron job (cron-check, inbox, flush) before
                # it runs: the job runs, its output goes to cron's mail, job.start says why.
                refused = str(e)
                print(f"opskit: run-job {name}: --log refused, output goes to cron's mail: {e}", file=sys.stderr)
        result = core(settings, _common.journal(), name, cmd or [], service=service,
                      ok_codes=(0, *(ok_exit or ())), log_refused=refused)
        _common.exit_with(result.exit_code)

    @app.command("cron-check")
    def cron_check(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
        """Find jobs that missed their schedule, run past max_runtime, or last failed.

        Schedules come from [jobs.NAME] in the config and from `run-job NAME` lines in the
        crontab. One notification per incident. A deploy or rollback a dead pipeline left
        unfinished is finished here (gated again, or reverted) and the owner told.
        Exit 1 when any job has a problem.

        Example: opskit cron-check --json
        """
        from opskit.jobs.cron_check import cron_check as core

        settings, journal = _common.settings(), _common.journal()
        before = _cron_check_before(settings, journal)
        report = core(settings, journal)
        beat = _heartbeat(settings, journal, before)
        if as_json:
            _common.print_json({**report.to_dict(), **({"heartbeat": beat} if beat else {})})
        else:
            for u in report.unfinished:
                outcome = f"finished: {u.status}: {u.reason}" if u.error is None else f"NOT finished: {u.error}"
                typer.echo(f"{'PROBLEM' if u.error else 'fixed':8} {u.service:24} {u.found}; {outcome}")
            if not report.jobs:
                typer.echo("no jobs to watch: add [jobs.NAME] to the config or run `opskit cron install`")
            for j in report.jobs:
                mark = "PROBLEM" if j.problems else "ok"
                detail = j.message or (f"next due {j.expected}" if j.expected else "")
                typer.echo(f"{mark:8} {j.name:24} {j.state:8} {detail}".rstrip())
        for w in report.warnings:
            _common.err_console().print(f"warning: {w}", markup=False)
        if beat and not beat["delivered"]:
            _common.err_console().print(f"warning: heartbeat ping failed: {beat['error']}", markup=False)
        _common.exit_with(0 if report.ok else 1)


# --- the heartbeat: cron-check's health, sent to an external monitor --------------------------

def _cron_check_before(settings: Settings, journal: Journal) -> Any:
    """cron-check's own lateness as it was before this run (the run itself ends it)."""
    if settings.monitor.heartbeat is None:
        return None
    from opskit.jobs.cron_check import cron_check_health  # only when a heartbeat is configured

    try:
        return cron_check_health(journal, settings)
    except Exception as e:  # the heartbeat must never stop cron-check's work
        return {"error": redact(str(e))[:200]}


def _heartbeat(settings: Settings, journal: Journal, before: Any) -> dict[str, Any] | None:
    if settings.monitor.heartbeat is None:
        return None
    from opskit.views.heartbeat import beat  # only when a heartbeat is configured

    try:
        return beat(settings, journal, cron_check=before).to_dict()
    except Exception as e:  # the ping must never fail cron-check: its work is done by now
        return {"sent": False, "delivered": False, "error": redact(f"{type(e).__name__}: {e}")[:200]}
