"""opskit push-run: the detached worker post-receive starts for the refs of one push."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("push-run", hidden=True)
    def push_run(
        service: str = typer.Argument(...),
        update: list[str] = typer.Option(..., "--update", help="CHAIN:SHA:REF, once per ref of the push."),
    ) -> None:
        """Deploy or chain the refs of one push, in this process (post-receive starts it detached).

        Example: opskit push-run primerouter --update p-1a2b3c4d:4d62098…:refs/heads/master
        """
        from opskit.chain import routing

        settings = _common.settings()
        updates = [routing.parse_update(u) for u in update]
        code = routing.run_updates(settings, settings.service(service), updates, _common.progress_writer(False))
        _common.exit_with(code)
