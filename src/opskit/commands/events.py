"""opskit events: read the journal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opskit.commands import _common

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    import typer  # the fast path (opskit/fastpath.py) runs this module without typer

    @app.command("events")
    def events(
        service: str = typer.Option(None, "--service", "-s", help="Only this service."),
        type_: str = typer.Option(None, "--type", "-t", help="Types and prefixes, comma-separated, "
                                  "e.g. health.fail,rollback. (a family alone, rollback, is its prefix)."),
        since: str = typer.Option(None, "--since", help="Duration (2h, 30m, 7d) or ISO time."),
        limit: int = typer.Option(None, "--limit", "-n", min=1, help="The newest N events."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing events as they come."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    ) -> None:
        """Read the event journal.

        Example: opskit events --service primerouter --type rollback --since 2h --json
        """
        show(service, type_, since, limit, follow, as_json)


def show(service: str | None, type_: str | None, since: str | None, limit: int | None,
         follow: bool, as_json: bool) -> int:
    """The command itself, for typer and the fast path alike."""
    from opskit.storage import event_types
    from opskit.storage.journal import parse_since
    from opskit.views.events import render_events

    types = event_types.parse(type_) if type_ else ()  # an unknown type is exit 2 before any read
    since_dt = parse_since(since) if since else None
    j = _common.journal()
    found = j.query(service=service, types=types, since=since_dt,
                    limit=limit if limit is not None else (None if as_json else 50))
    render_events(found, as_json=as_json)
    if follow:
        last = found[-1].id if found else None
        if last is None:
            last = j.last_event_id()
        for ev in j.follow(start_after=last, service=service, types=types):
            render_events([ev], as_json=as_json, header=False)
    return 0
