"""opskit inbox: apply the decisions tapped on a phone (Telegram buttons, ntfy actions)."""

from __future__ import annotations

import sys

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("inbox")
    def inbox(
        wait: float = typer.Option(0.0, "--wait", metavar="SECONDS",
                                   help="Keep listening this long (cron runs it with --wait 50)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Read every channel that carries decisions back, once, and apply each tap exactly once.

        Exit 0 read, 1 a channel could not be read (its taps wait for the next run), 2 bad input.

        Example: opskit inbox --wait 50
        """
        _common.seconds("--wait", wait)
        from opskit.chain import inbox as core

        report = core.run(_common.settings(), _common.journal(), wait=wait, write=_common.progress_writer(as_json))
        if as_json:
            _common.print_json(report.to_dict())
        elif not report.busy and not report.applied and not report.refused and report.ok:
            print("no decisions waiting")
        if not report.ok:
            sys.stderr.write("inbox: " + "; ".join(report.problems) + "\n")
        _common.exit_with(0 if report.ok else 1)
