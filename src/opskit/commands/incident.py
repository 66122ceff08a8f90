"""opskit incident: the story of a deploy incident, and a postmortem skeleton."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from opskit.commands import _common

if TYPE_CHECKING:
    from opskit.base.config import Settings


def register(app: typer.Typer) -> None:
    @app.command("incident")
    def incident(
        which: str = typer.Argument("last", metavar="[EVENT_ID|last]",
                                    help="Any event of the incident (health.fail, rollback.*, service.frozen), "
                                    "or last."),
        service: str = typer.Option(None, "--service", "-s", help="Only this service's incidents."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object."),
        as_markdown: bool = typer.Option(False, "--markdown", help="A postmortem skeleton in Markdown."),
        list_: bool = typer.Option(False, "--list", help="List the incidents, one a line."),
    ) -> None:
        """Tell a deploy incident as a story: every step with its time, detection, restore, downtime, humans.

        Example: opskit incident last --service primerouter --markdown > postmortem.md
        """
        from opskit.views import incident as core

        if as_json and as_markdown:
            _common.usage("--json and --markdown: choose one")
        if which.lstrip("+-").isdigit() and not list_:  # words are core.find's to refuse
            which = str(_common.row_id("EVENT_ID", which))
        settings = _common.settings()
        if service and settings.fleet is None:  # in a fleet, another host's service is named too
            settings.service(service)
        journal = _common.journal()
        source: core.Source = journal
        if journal.fleet is not None:  # every host's events: a revert on another host is found here
            from opskit.storage import fleet_read
            from opskit.storage.fleet import Unreachable
            from opskit.views.events import unreachable_line

            fleet_source = fleet_read.FleetEvents(journal.fleet, journal)
            try:
                _tell(core, fleet_source, settings, which, service, as_json, as_markdown, list_)
                _common.exit_with(0)
            except Unreachable as e:
                down = fleet_read.note_unreachable(journal.fleet, journal, str(e))
                print(unreachable_line(down), file=sys.stderr, flush=True)
        _tell(core, source, settings, which, service, as_json, as_markdown, list_)
        _common.exit_with(0)


def _tell(core: Any, journal: Any, settings: Settings, which: str, service: str | None, as_json: bool,
          as_markdown: bool, list_: bool) -> None:
    """The incident (or the list) from `journal`: this host's, or the fleet's events."""
    from opskit.git.repo import Git

    if list_:
        found = core.anchors(journal, service)
        for ev in found:
            if as_json:
                _common.print_json(core.build(journal, ev).to_dict())
            else:
                print(core.summary_line(journal, ev))
        if not found and not as_json:
            print("no incidents" + (f" for {service}" if service else ""))
        return
    inc = core.build(journal, core.find(journal, which, service))
    if as_json:
        _common.print_json(inc.to_dict())
    elif as_markdown:
        svc = settings.services.get(inc.service)
        repo = None
        if svc is not None:
            repo = Git(svc.repo) if not svc.pull_mode else Git(svc.worktree)
        print(core.markdown(inc, repo))
    else:
        print("\n".join(core.render(inc)))
