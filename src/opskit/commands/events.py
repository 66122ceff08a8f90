"""opskit events: read the journal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from opskit.commands import _common

if TYPE_CHECKING:
    import datetime as dt

    import typer

    from opskit.storage.journal import Journal


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
        host: str = typer.Option(None, "--host", help="Only this host's events (a fleet journal)."),
    ) -> None:
        """Read the event journal.

        Example: opskit events --service primerouter --type rollback --since 2h --json
        """
        show(service, type_, since, limit, follow, as_json, host)


def show(service: str | None, type_: str | None, since: str | None, limit: int | None,
         follow: bool, as_json: bool, host: str | None = None) -> int:
    """The command itself, for typer and the fast path alike."""
    from opskit.storage import event_types
    from opskit.storage.journal import parse_since
    from opskit.views.events import render_events

    types = event_types.parse(type_) if type_ else ()  # an unknown type is exit 2 before any read
    since_dt = parse_since(since) if since else None
    settings = _common.settings()
    if host is not None and settings.fleet is None:
        _common.usage(no_fleet("--host"))
    j = _common.journal()
    n = limit if limit is not None else (None if as_json else 50)
    if j.fleet is not None:
        return _fleet(j, service, types, since_dt, n, follow, as_json, host)
    found = j.query(service=service, types=types, since=since_dt, limit=n)
    render_events(found, as_json=as_json)
    if follow:
        last = found[-1].id if found else None
        if last is None:
            last = j.last_event_id()
        for ev in j.follow(start_after=last, service=service, types=types):
            render_events([ev], as_json=as_json, header=False)
    return 0


def no_fleet(option: str) -> str:
    """The one line for a fleet option given to a host without a fleet journal."""
    return (f"{option}: this host has no fleet journal, its events are all its own; set [opskit] journal = "
            '"postgresql://…" (and [opskit] host) to read a fleet, or leave out ' + option)


def _fleet(j: Journal, service: str | None, types: tuple[str, ...], since: dt.datetime | None,
           limit: int | None, follow: bool, as_json: bool, host: str | None) -> int:
    """Every host's events from the fleet database; when it is away, this host's own (said
    once on stderr), the exit code the same: the reader still gets what this host knows."""
    from opskit.storage import fleet_read
    from opskit.storage.fleet import Unreachable
    from opskit.views.events import render_events, unreachable_line

    fleet = j.fleet
    assert fleet is not None
    if fleet_read.pending(fleet, j):  # this host's newest are shown too, in the fleet's order
        fleet.sync(j)
    try:
        found = fleet_read.query(fleet, j, host=host, service=service, types=types, since=since, limit=limit)
        last = found[-1].id if found else fleet_read.last_id(fleet, j)
    except Unreachable as e:
        down = fleet_read.note_unreachable(fleet, j, str(e))
        print(unreachable_line(down), file=sys.stderr, flush=True)
        if host is not None and host != fleet.host:
            found = []
        else:
            found = j.query(service=service, types=types, since=since, limit=limit)
        render_events(found, as_json=as_json)
        if follow:
            after = found[-1].id if found else j.last_event_id()
            for ev in j.follow(start_after=after, service=service, types=types):
                render_events([ev], as_json=as_json, header=False)
        return 0
    render_events(found, as_json=as_json, hosts=True)
    if follow:
        filters: dict[str, Any] = {k: v for k, v in (("host", host), ("service", service)) if v is not None}
        if types:
            filters["types"] = types
        try:
            for ev in fleet_read.follow(fleet, j, start_after=last, **filters):
                render_events([ev], as_json=as_json, header=False, hosts=True)
        except Unreachable as e:  # gone while following: this host's own events go on
            down = fleet_read.note_unreachable(fleet, j, str(e))
            print(unreachable_line(down), file=sys.stderr, flush=True)
            if host is None or host == fleet.host:
                for ev in j.follow(start_after=j.last_event_id(), service=service, types=types):
                    render_events([ev], as_json=as_json, header=False)
    return 0
