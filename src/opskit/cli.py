"""The `opskit` command line. Thin: parse, call one core function, map errors to exit codes.

This file is the *only* place that turns exceptions into exit codes (STYLE §2). Each
area's commands live in opskit/commands/<area>.py and are registered here; they import
their core modules inside the command body so `opskit --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from pathlib import Path

import typer

try:  # typer >= 0.2x vendors click as typer._click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click import ClickException  # type: ignore[no-redef]

from opskit.commands import _common
from opskit.errors import ExitCode, OpsError, redact

app = typer.Typer(
    name="opskit",
    help="Production services that operate themselves: gate every deploy, revert what fails, "
    "prove pushes landed, find drift, and never fail silently.",
    no_args_is_help=True,
    add_completion=False,
    # Locals hold webhook URLs and tokens: never print them (STYLE §2).
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


def _register() -> None:
    import importlib
    import pkgutil

    import opskit.commands as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"opskit.commands.{mod.name}")
        module.register(app)


_register()


def _crash_log(exc: BaseException) -> Path | None:
    """Write the traceback (secrets masked) to the state dir; return its path."""
    text = redact("".join(traceback.format_exception(exc)))
    try:
        state_dir = _common.STATE.state_dir()
        state_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = state_dir / f"crash-{stamp}-{os.getpid()}.log"
        path.write_text(text)
        return path
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="opskit", standalone_mode=False)
    except OpsError as e:
        print(f"opskit: {e.message}", file=sys.stderr)
        return int(e.exit_code)
    except typer.Exit as e:
        # typer turns Ctrl-C into Exit(130) itself; still say what happened.
        if e.exit_code == ExitCode.INTERRUPTED:
            print("opskit: interrupted", file=sys.stderr)
        return int(e.exit_code)
    except typer.Abort:
        print("opskit: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except ClickException as e:
        e.show()
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("opskit: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception as e:  # the one place unexpected errors are caught
        where = _crash_log(e)
        hint = f" (traceback in {where})" if where else ""
        print(f"opskit: internal error: {redact(type(e).__name__ + ': ' + str(e))[:300]}{hint}",
              file=sys.stderr)
        return int(ExitCode.INTERNAL)
    return int(rv or 0)


if __name__ == "__main__":
    raise SystemExit(main())
