"""opskit deploy, auto-revert, unfreeze: the pipeline and its way back."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        service: str = typer.Argument(..., help="Service name from opskit.toml."),
        sha: str = typer.Option(None, "--sha", help="Deploy this commit (default: the branch tip, if it moved)."),
        lock_wait: float = typer.Option(600.0, "--lock-wait", min=0, help="Seconds to wait for a running deploy."),
        chain: str = typer.Option(None, "--chain", hidden=True, help="Chain id (set when a push runs it, so every event of the push shares one)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Deploy SERVICE: move the worktree, run `deploy`, gate it, revert it if it fails.

        Without --sha it deploys the canonical branch tip only when it moved since the last
        deploy (safe from cron every minute in pull mode).

        Example: opskit deploy primerouter --sha 4d62098
        """
        _common.seconds("--lock-wait", lock_wait)
        from opskit.deploy.pipeline import deploy as run_deploy

        result = run_deploy(_common.settings(), _common.journal(), service, sha, chain=chain,
                            write=_common.progress_writer(as_json), lock_wait=lock_wait)
        say = _common.progress_writer(False)  # escaped: a reason quotes subjects and step output
        if as_json:
            _common.print_json(result.to_dict())
        elif result.status == "nothing":
            say(f"{service}: nothing to do ({result.reason})")
        else:
            say(f"{service}: {result.status}: {result.reason}")
        _common.exit_with(result.exit_code)

    @app.command("auto-revert")
    def auto_revert(
        service: str = typer.Argument(..., help="Service name from opskit.toml."),
        commit: str = typer.Option(None, "--commit", help="The bad commit (default: what the worktree runs)."),
        reason: str = typer.Option(None, "--reason", help="Why; goes into the commit message and the notification."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact plan; change nothing."),
        no_deploy: bool = typer.Option(False, "--no-deploy", help="Make and land the revert; skip redeploy and gate."),
        lock_wait: float = typer.Option(600.0, "--lock-wait", min=0, help="Seconds to wait for a running deploy."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Revert a bad deploy with a new commit, land it, verify it, redeploy, re-gate, notify.

        Example: opskit auto-revert primerouter --reason "HTTP 503 after deploy" --dry-run
        """
        _common.seconds("--lock-wait", lock_wait)
        from opskit.deploy.revert import auto_revert as run_revert

        result = run_revert(_common.settings(), _common.journal(), service, commit=commit, reason=reason,
                            dry_run=dry_run, no_deploy=no_deploy, write=_common.progress_writer(as_json), lock_wait=lock_wait)
        if as_json:
            _common.print_json(result.to_dict())
        elif not dry_run:
            _common.progress_writer(False)(f"{service}: {result.status}: {result.reason}")  # escaped
        _common.exit_with(result.exit_code)

    @app.command("freeze")
    def freeze(
        service: str = typer.Argument(..., help="Service name from opskit.toml."),
        reason: str = typer.Option(None, "--reason", help="Why; shown to whoever tries to deploy."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Hold every deploy of SERVICE until `opskit unfreeze` (the Freeze button does the same).

        Example: opskit freeze primerouter --reason "investigating the 03:57 revert"
        """
        from opskit.chain import approvals
        from opskit.deploy.freeze import freeze_by_hand

        event = freeze_by_hand(_common.settings(), _common.journal(), service, by=approvals.who(), reason=reason)
        if as_json:
            _common.print_json({"service": service, "frozen": True, "event_id": event, "already": event is None})
        elif event is None:
            print(f"{service}: frozen already; nothing to do")
        _common.exit_with(0)

    @app.command("unfreeze")
    def unfreeze(
        service: str = typer.Argument(..., help="Service name from opskit.toml."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Allow deploys again after a failed rollback froze the service.

        Example: opskit unfreeze primerouter
        """
        from opskit.deploy.freeze import unfreeze as run_unfreeze

        was = run_unfreeze(_common.settings(), _common.journal(), service)
        if as_json:
            _common.print_json({"service": service, "unfrozen": was is not None, "was": was})
        elif was is None:
            print(f"{service}: not frozen; nothing to do")
        else:
            print(f"{service}: unfrozen (was frozen since {was.get('since')}: {was.get('reason')})")
        _common.exit_with(0)
