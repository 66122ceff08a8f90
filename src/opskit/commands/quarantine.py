"""opskit quarantine list|release: trees the pre-receive hook refuses after an auto-revert."""

from __future__ import annotations

import typer

from opskit.commands import _common


def _user() -> str:
    import getpass
    import os

    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:
        return f"uid {os.getuid()}"


def register(app: typer.Typer) -> None:
    q_app = typer.Typer(help="Trees refused on push because their deploy was auto-reverted.\n\n"
                        "Example: opskit quarantine list primerouter",
                        no_args_is_help=True)
    app.add_typer(q_app, name="quarantine")

    @q_app.command("list")
    def list_(
        service: str = typer.Argument(None, help="Only this service."),
        all_: bool = typer.Option(False, "--all", help="Include released entries."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    ) -> None:
        """List quarantined trees: the tree, the reverted commit, the rollback event, why.

        Example: opskit quarantine list primerouter
        """
        if service:
            _common.settings().service(service)  # an unknown name is a usage error, not "none"
        rows = [dict(r) for r in _common.journal().quarantine_list(service, include_released=all_)]
        if as_json:
            for r in rows:
                _common.print_json(r)
            return
        out = _common.console()
        if not rows:
            out.print("nothing quarantined", markup=False, highlight=False)
        for r in rows:
            state = f"released {r['released']} by {r['released_by']}" if r["released"] else "quarantined"
            out.print(f"{r['service']}  tree {r['tree']}  reverted {r['sha'][:12]}  "
                      f"event #{r['event_id']}  {r['created']}  {state}: {r['reason']}",
                      markup=False, highlight=False, soft_wrap=True)

    @q_app.command("release")
    def release(
        service: str = typer.Argument(..., help="Service name from the config."),
        ident: str = typer.Argument(..., metavar="TREE|SHA",
                                    help="Quarantined tree, the reverted commit, or any commit "
                                    "with that tree (4+ hex digits)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Let pushes of a quarantined tree through again (journaled as quarantine.released).
        Exit 1 if nothing quarantined matches.

        Example: opskit quarantine release primerouter 4b825dc6
        """
        from opskit.guard.lockdown import release_quarantine

        settings = _common.settings()
        svc = settings.service(service)
        rows = release_quarantine(settings, _common.journal(), svc, ident, by=_user())
        if as_json:
            _common.print_json({"service": service, "released": rows})
        elif rows:
            _common.console().print(f"released tree {rows[0]['tree']} of {service} "
                                    f"(reverted {rows[0]['sha'][:12]}, event #{rows[0]['event_id']})",
                                    markup=False, highlight=False, soft_wrap=True)
        else:
            _common.err_console().print(f"nothing quarantined for {service} matches {ident!r} "
                                        f"(see: opskit quarantine list {service})",
                                        markup=False, highlight=False)
        _common.exit_with(0 if rows else 1)
