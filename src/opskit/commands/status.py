"""opskit status: one-screen overview."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        services: list[str] = typer.Argument(None, help="Only these services (default: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Each service's deployed commit, last verdict, freeze, quarantine, deploy in progress; the outbox.
        Exit 0 when nothing needs attention, 1 when something does (an interrupted deploy, a freeze,
        a failed verdict, a broken channel, a stopped cron-check, records outside the journal,
        an old outbox message, a missed job, a failing heartbeat ping).

        Example: opskit status --json
        """
        from opskit.views.status import collect, render

        data = collect(_common.settings(), _common.journal(), services or None)
        if as_json:
            _common.print_json(data)
        else:
            for line in render(data):
                print(line)
        _common.exit_with(1 if data["attention"] else 0)
