"""The `opskit` command line. Thin: parse, call one core function, map errors to exit codes.

This file is the *only* place that turns exceptions into exit codes. Each
area's commands live in opskit/commands/<area>.py and are registered here; they import
their core modules inside the command body so `opskit --help` stays fast. Typer itself is
imported only when the fast path (opskit/fastpath.py) does not take the command line: it is
half of an `opskit events`' start-up.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit import fastpath
from opskit.base.errors import ExitCode, OpsError, redact
from opskit.commands import _common

if TYPE_CHECKING:
    import typer

_APP: typer.Typer | None = None


def build_app() -> typer.Typer:
    """The Typer application with every command registered (built once, on first use)."""
    global _APP
    if _APP is None:
        _APP = _build()
    return _APP


def __getattr__(name: str) -> Any:  # `opskit.cli.app`, built when first asked for
    if name == "app":
        return build_app()
    raise AttributeError(name)


def _build() -> typer.Typer:
    import typer

    app = typer.Typer(
        name="opskit",
        help="Production services that operate themselves: gate every deploy, revert what fails, "
        "prove pushes landed, find drift, and never fail silently.",
        no_args_is_help=True,
        add_completion=False,
        # Locals hold webhook URLs and tokens: never print them.
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode=None,
    )

    @app.callback()
    def _global(
        config: Path = typer.Option(None, "--config", "-c", metavar="PATH",
                                    help="Config file (default: $OPSKIT_CONFIG, ./opskit.toml, "
                                    "~/.config/opskit/opskit.toml, /etc/opskit/opskit.toml)."),
    ) -> None:
        _common.STATE.config_path = config

    _register(app)
    return app


# `opskit --help` lists commands in this order with these one-liners;
# a command module not named here is still registered, after these, with its docstring.
_ORDER = ["health", "deploy", "verify", "drift", "notify", "chain", "events", "hooks", "quarantine",
          "cron", "keys", "status", "doctor", "demo"]
_ONE_LINE = {
    "health-gate": "Probe a service until there is a verdict: healthy or not.",
    "deploy": "Run the pipeline: deploy, gate, auto-revert on failure.",
    "auto-revert": "Revert a bad deploy, land it, redeploy, re-gate, notify.",
    "freeze": "Hold every deploy of a service until unfreeze.",
    "unfreeze": "Allow deploys again after a failed rollback froze the service.",
    "verify-push": "Prove that a push landed, by asking the remote itself.",
    "drift-scan": "Find dirty or bypassed production state (--heal restores).",
    "notify": "Deliver a notification durably (--flush retries the queue).",
    "pending": "List changes parked for a human decision.",
    "approve": "Approve a parked change: merge and deploy it now.",
    "reject": "Reject a parked change; journaled and announced.",
    "events": "Read the event journal (--follow streams it).",
    "hooks": "Install, remove or check opskit's git hooks for a service.",
    "quarantine": "List or release trees refused after an auto-revert.",
    "cron": "Install, remove or show opskit's block in the crontab.",
    "keys": "SSH keys of the push account: git push and fetch only.",
    "run-job": "Run a job and journal how it went; notify when it fails.",
    "cron-check": "Find jobs that missed their schedule, overran or failed.",
    "status": "One screen: what runs where, and is it all right.",
    "doctor": "Check the set-up and say what to fix.",
    "demo": "The whole self-healing loop in a throw-away sandbox.",
    "inbox": "Apply the decisions tapped on a phone, each exactly once.",
    "incident": "Tell a deploy incident as a story, with its downtime.",
    "metrics": "Prometheus metrics from the journal (--textfile for node_exporter).",
    "react": "Run the reactions due: each event's next step, in order.",
    "reactions": "Each reaction: its cursor, how far behind, its last result.",
}


def _register(app: typer.Typer) -> None:
    import importlib
    import pkgutil

    import opskit.commands as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        importlib.import_module(f"opskit.commands.{name}").register(app)
    for cmd in app.registered_commands:
        if cmd.name in _ONE_LINE:
            cmd.short_help = _ONE_LINE[cmd.name]
    for group in app.registered_groups:
        if group.name in _ONE_LINE:
            group.short_help = _ONE_LINE[group.name]


def _crash_log(exc: BaseException) -> Path | None:
    """Write the traceback (secrets masked) to the state dir; return its path."""
    import traceback  # only on the crash path: ~6 ms of every command's start-up otherwise

    text = redact("".join(traceback.format_exception(exc)))
    try:
        state_dir = _common.STATE.state_dir()
        state_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = state_dir / f"crash-{stamp}-{os.getpid()}.log"
        # A new file, never through a link planted at this predictable name (tests/test_state_links.py).
        from opskit.base import statefs  # only on the crash path, like traceback

        fd = statefs.create_exclusive(path, state_dir, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        return path
    except Exception:
        return None


def _journal_problem(e: Exception) -> str | None:
    try:
        from opskit.storage.fallback import journal_problem

        return journal_problem(e, _common.STATE.state_dir())
    except Exception:
        return None


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (systemd, kill, a cron timeout) unwinds like Ctrl-C: proc.run kills the child's
    # process group on the way out, so no deploy command is left running without its lock.
    # A second SIGTERM (a group kill also reaches a detached run through its recorder,
    # base/detach.py) must not cut that unwinding short and leave the journal half-written.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import signal

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    args = list(sys.argv[1:] if argv is None else argv)
    fast = fastpath.match(args)
    if fast is not None:
        return _guarded(fast)
    return _guarded(lambda: _through_typer(args))


def _through_typer(args: list[str]) -> int:
    """Parse with Typer and run; Typer's and click's own outcomes become exit codes here."""
    import typer

    try:  # typer >= 0.2x vendors click as typer._click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer depends on click
        from click import ClickException  # type: ignore[no-redef]

    command = typer.main.get_command(build_app())
    try:
        rv = command.main(args=args, prog_name="opskit", standalone_mode=False)
    except typer.Exit as e:
        # typer turns Ctrl-C into Exit(130) itself; still say what happened.
        if e.exit_code == ExitCode.INTERRUPTED:
            print("opskit: interrupted", file=sys.stderr)
        return int(e.exit_code)
    except typer.Abort:
        print("opskit: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `opskit`: the help is the answer
            e.show()
            return int(ExitCode.USAGE)
        # One line, like every other opskit error, instead of click's usage block.
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"opskit: {e.format_message()}{hint}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return int(rv or 0)


def _guarded(run: Callable[[], int]) -> int:
    """Run a parsed command; every other outcome becomes its exit code and one line."""
    try:
        return run()
    except OpsError as e:
        print(f"opskit: {e.message}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("opskit: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception as e:  # the one place unexpected errors are caught
        where = _crash_log(e)
        hint = f" (traceback in {where})" if where else ""
        journal = _journal_problem(e)
        if journal:  # a full disk or a corrupt journal.db: say so, with the path and the fix
            print(f"opskit: {journal}{hint}", file=sys.stderr)
            return int(ExitCode.INTERNAL)
        print(f"opskit: internal error: {redact(type(e).__name__ + ': ' + str(e))[:300]}{hint}",
              file=sys.stderr)
        return int(ExitCode.INTERNAL)

if __name__ == "__main__":
    raise SystemExit(main())
