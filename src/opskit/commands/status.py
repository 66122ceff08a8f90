"""opskit status: one-screen overview."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        services: list[str] = typer.Argument(None, help="Only these services (default: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        host: str = typer.Option(None, "--host", help="Only this host of the fleet (a fleet journal)."),
    ) -> None:
        """Each service's deployed commit, last verdict, freeze, quarantine, deploy in progress; the outbox.
        Exit 0 when nothing needs attention, 1 when something does (an interrupted deploy, a freeze,
        a failed verdict, a broken channel, a stopped cron-check, records outside the journal,
        an old outbox message, a missed job, a failing heartbeat ping, an unreachable fleet journal).
With a fleet journal, every host of the fleet too: last seen, events forwarded, each service's verdict.

        Example: opskit status --json
        """
        from opskit.commands.events import no_fleet
        from opskit.views.status import collect, render

        settings = _common.settings()
        if host is not None and settings.fleet is None:
            _common.usage(no_fleet("--host"))
        data = collect(settings, _common.journal(), services or None, host=host)
        if as_json:
            _common.print_json(data)
        else:
            for line in render(data):
                print(line)
        _common.exit_with(1 if data["attention"] else 0)
