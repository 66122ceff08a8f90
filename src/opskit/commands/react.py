"""opskit react | reactions: run the user's reactions after their events; show where each stands."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("react")
    def react(
        replay: str = typer.Option(None, "--replay", metavar="NAME",
                                   help="Run this reaction again from --from on purpose."),
        from_id: int = typer.Option(None, "--from", metavar="EVENT_ID",
                                    help="With --replay: the first event to run it for."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing (cron, the trigger)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Run every reaction over the events after its cursor, in order, at least once.
        One dispatcher at a time: a no-op while another runs. Exit 1 when a run failed.

        Example: opskit react --replay migrate-down --from 1042
        """
        from opskit.reactions.dispatch import dispatch

        if (replay is None) != (from_id is None):
            _common.usage("--replay NAME and --from EVENT_ID go together; e.g. "
                          "opskit react --replay migrate-down --from 1042")
        if from_id is not None and from_id < 1:
            _common.usage(f"--from {from_id}: an event id is 1 or more (opskit events --json shows them)")
        settings = _common.settings()
        write = None if quiet or as_json else _common.progress_writer(False)
        report = dispatch(settings, _common.journal(), only=replay, replay_from=from_id,
                          wait=60.0 if replay else 0.0, say=write)
        if as_json:
            _common.print_json(report.to_dict())
        elif write is not None:
            if report.busy:
                write("another `opskit react` is running; it takes these events")
            else:
                write(f"{report.ran} run(s): {report.ok} ok, {report.failed} failed, {report.gave_up} gave up"
                      + (f"; left for root (other accounts' work): {', '.join(report.skipped)}"
                         if report.skipped else ""))
        _common.exit_with(1 if report.failed or report.gave_up else 0)

    @app.command("reactions")
    def reactions(
        as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    ) -> None:
        """Each reaction: its cursor, how many of its events wait, its last result.

        Example: opskit reactions --json
        """
        from opskit.reactions.dispatch import status
        from opskit.views.reactions import lines

        rows = status(_common.settings(), _common.journal())
        if as_json:
            for r in rows:
                _common.print_json(r)
            return
        out = _common.console()
        for line in lines(rows):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
