"""opskit pending, approve, reject: the human in the feature-branch chain."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("pending")
    def pending(
        service: str = typer.Argument(None, help="Only this service (default: all)."),
        all_: bool = typer.Option(False, "--all", help="Include decided changes (approved, rejected, superseded)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    ) -> None:
        """List changes parked for a human decision (review exit 3, or a failed test with test_failure = "human").

        Example: opskit pending primerouter --json
        """
        from opskit.chain import approvals

        if service:
            _common.settings().service(service)  # unknown service: exit 2 naming the known ones
        rows = approvals.pending(_common.journal(), service, include_decided=all_)
        if as_json:
            for row in rows:
                _common.print_json(row.to_dict())
        elif not rows:
            print("nothing parked" + (f" for {service}" if service else ""))
        else:
            from opskit.base.text import shown  # only for the plain listing

            for row in rows:
                print(shown(row.describe()))  # the branch and the cause (a test's output) are data
            if any(r.status == "parked" for r in rows):
                print('decide: opskit approve ID   |   opskit reject ID --reason "…"')
        _common.exit_with(0)

    @app.command("approve")
    def approve(
        approval_id: int = typer.Argument(..., metavar="ID", help="The parked change's id (opskit pending)."),
        lock_wait: float = typer.Option(1800.0, "--lock-wait", min=0, help="Seconds to wait for a running deploy."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Approve a parked change: merge it and deploy it now (gate and auto-revert as usual).

        Exits with the deploy's code: 0 deployed and healthy, 1 failed or reverted.

        Example: opskit approve 3
        """
        _common.seconds("--lock-wait", lock_wait)
        approval_id = _common.row_id("ID", approval_id)
        from opskit.chain.feature import approve as run_approve

        result = run_approve(_common.settings(), _common.journal(), approval_id, write=_common.progress_writer(as_json),
                             lock_wait=lock_wait)
        if as_json:
            _common.print_json(result.to_dict())
        else:
            from opskit.base.text import shown  # only for the plain result line

            print(shown(f"{result.service}: change #{approval_id}: {result.status}: {result.reason}"))
        _common.exit_with(result.exit_code)

    @app.command("reject")
    def reject(
        approval_id: int = typer.Argument(..., metavar="ID", help="The parked change's id (opskit pending)."),
        reason: str = typer.Option(..., "--reason", help="Why; journaled and sent to the team."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    ) -> None:
        """Reject a parked change: nothing is merged; the decision is journaled and announced.

        Example: opskit reject 3 --reason "touches the billing schema; needs a migration first"
        """
        from opskit.chain import approvals

        approval_id = _common.row_id("ID", approval_id)
        row = approvals.reject(_common.settings(), _common.journal(), approval_id, reason)
        if as_json:
            _common.print_json(row.to_dict())
        else:
            from opskit.base.text import shown  # only for the plain result line

            print(shown(f"{row.service}: change #{row.id} ({row.branch} {row.sha[:10]}) rejected by {row.decided_by}"))
        _common.exit_with(0)
