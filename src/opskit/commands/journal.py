"""opskit journal recover: rebuild a damaged journal.db from what is readable."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    j_app = typer.Typer(help="The state dir's journal (journal.db).\n\nExample: opskit journal recover",
                        no_args_is_help=True)
    app.add_typer(j_app, name="journal")

    @j_app.command("recover")
    def recover(
        force: bool = typer.Option(False, "--force", help="Rebuild even when quick_check finds nothing wrong."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    ) -> None:
        """Keep a damaged journal.db aside and rebuild it from every readable row; say what was lost.

        Refused while a deploy holds a service's lock. Exit 0 when nothing was lost (or
        nothing was wrong), 1 when some rows could not be read.

        Example: opskit journal recover
        """
        from opskit.storage.recover import recover as core

        settings = _common.settings()
        report = core(settings.state_dir, list(settings.services), force=force)
        if as_json:
            _common.print_json(report.to_dict())
        elif not report.rebuilt:
            print(f"{report.path}: passes SQLite's quick_check; nothing to recover (--force rebuilds anyway)")
        else:
            print(f"{report.path}: rebuilt" + (f" (it was damaged: {report.problems[0]})" if report.problems else ""))
            for t in report.tables:
                print(f"  {t.line()}")
            for p in report.kept_aside:
                print(f"  the damaged file is kept aside: {p}")
            if report.lost_any:
                print("  some rows could not be read and are lost; check `opskit status` and `opskit events`")
        _common.exit_with(1 if report.lost_any else 0)
