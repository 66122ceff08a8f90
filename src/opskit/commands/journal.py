"""opskit journal recover | migrate | sync: the local journal.db, and the fleet database."""

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

    @j_app.command("migrate")
    def migrate_cmd() -> None:
        """Create or bring up to date the fleet database's schema ([opskit] journal). Idempotent:
        a current schema is left as it is; concurrent runs wait for each other.

        Exit 0 when the schema is current, 2 without a fleet journal, 1 when the database
        cannot be reached or refused (the reason on stderr).

        Example: opskit journal migrate
        """
        from opskit.storage.fleet import SCHEMA_VERSION, Fleet, Unreachable, migrate

        settings = _common.settings()
        if settings.fleet is None:
            _common.usage('there is no fleet journal to migrate; set [opskit] journal = "postgresql://…" '
                                "in the config (the local SQLite journal needs no migration)")
        try:
            applied = migrate(Fleet(settings.fleet, settings.state_dir))
        except Unreachable as e:
            from opskit.base.errors import OpsError

            raise OpsError(f"journal migrate: {e}") from None
        if applied:
            print(f"fleet journal: applied schema version{'s' if len(applied) > 1 else ''} "
                  f"{', '.join(map(str, applied))}; now at {SCHEMA_VERSION}")
        else:
            print(f"fleet journal: schema version {SCHEMA_VERSION}, current; nothing to do")

    @j_app.command("sync")
    def sync_cmd() -> None:
        """Forward the events this host journaled while the fleet database was away, and merge
        the quarantine and freezes both ways, now (cron-check does it every run).

        Exit 0 when the fleet journal is up to date, 1 when it cannot be reached.

        Example: opskit journal sync
        """
        settings = _common.settings()
        if settings.fleet is None:
            _common.usage('there is no fleet journal; set [opskit] journal = "postgresql://…" in the config')
        journal = _common.journal()
        assert journal.fleet is not None
        # Loaded, the shared outbox forwards what this host queued while the database was away.
        from opskit.storage import fleet_outbox  # noqa: F401

        n = journal.fleet.sync(journal, force=True)
        if n is None:
            why = (journal.kv_get("fleet", "unreachable") or {}).get("error", "unreachable")
            from opskit.base.errors import OpsError

            raise OpsError(f"journal sync: the fleet journal cannot be reached ({why}); the events stay "
                           "here and are forwarded when it is back")
        print(f"fleet journal: {n} event{'s' if n != 1 else ''} forwarded; quarantine and freezes merged")
