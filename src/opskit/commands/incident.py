"""opskit incident: the story of a deploy incident, and a postmortem skeleton."""

from __future__ import annotations

import typer

from opskit.commands import _common


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
        from opskit.git.repo import Git
        from opskit.views import incident as core

        if as_json and as_markdown:
            _common.usage("--json and --markdown: choose one")
        if which.lstrip("+-").isdigit() and not list_:  # words are core.find's to refuse
            which = str(_common.row_id("EVENT_ID", which))
        settings = _common.settings()
        if service:
            settings.service(service)
        journal = _common.journal()
        if list_:
            found = core.anchors(journal, service)
            for ev in found:
                if as_json:
                    _common.print_json(core.build(journal, ev).to_dict())
                else:
                    print(core.summary_line(journal, ev))
            if not found and not as_json:
                print("no incidents" + (f" for {service}" if service else ""))
            _common.exit_with(0)
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
        _common.exit_with(0)
