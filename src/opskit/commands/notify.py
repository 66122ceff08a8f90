"""opskit notify: send a message through the outbox, or flush what is still queued."""

from __future__ import annotations

import sys

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("notify")
    def notify(
        message: str = typer.Argument(None, metavar="MESSAGE|-", show_default=False,
                                      help="The text to send; - reads it from stdin."),
        channel: list[str] = typer.Option(None, "--channel", "-C", metavar="NAME",
                                          help="Send to this channel (repeatable). Default: the "
                                          "service's notify list, else [opskit] notify."),
        level: str = typer.Option("info", "--level", "-l", help="info, warning, error or critical."),
        title: str = typer.Option(None, "--title", "-t", help="A short title."),
        service: str = typer.Option(None, "--service", "-s", help="The service this is about."),
        flush: bool = typer.Option(False, "--flush", help="Retry every queued notification, oldest first."),
        show: int = typer.Option(None, "--show", metavar="ID", help="Print outbox message ID in full."),
        retry_for: float = typer.Option(None, "--retry-for", metavar="SECONDS",
                                        help="Retry transient failures this long (default: the channel's retry_for)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Deliver a notification durably: outbox first, marked delivered only when confirmed.

        Exit 0 delivered, 1 queued or a channel broken, 2 bad input.

        Example: opskit notify --level error --title "deploy failed" --service web "health gate failed"
        """
        from opskit import notify as core
        from opskit.base.errors import UsageError

        _common.seconds("--retry-for", retry_for)
        if show is not None:
            outbox_id = _common.row_id("--show", show)
            row = core.show(_common.journal(), outbox_id)
            if as_json:
                _common.print_json(row)
            else:
                sys.stdout.write(_render_row(row))
            return
        if flush:
            if message is not None or channel:
                raise UsageError("--flush takes no MESSAGE or --channel; run `opskit notify --flush` alone")
            report = core.flush(_common.settings(), _common.journal(), retry_for=retry_for)
            if as_json:
                _common.print_json(report.to_dict())
            elif report.delivered or report.still_queued or report.broken or report.busy:
                line = (f"outbox flushed: {report.delivered} delivered, {report.still_queued} still queued, "
                        f"{report.broken} broken")
                if report.busy:
                    line += f", {report.busy} being sent by another opskit process"
                _common.console().print(line, markup=False)
            else:
                _common.console().print("outbox empty: nothing to deliver", markup=False)
            if not report.ok:
                why = "; ".join(report.problems) or "see `opskit events --type notify`"
                print(f"opskit: notifications not delivered: {why}", file=sys.stderr)
                _common.exit_with(1)
            return

        if message is None:
            raise UsageError("no message: give MESSAGE, - to read it from stdin, or --flush")
        if message == "-":
            message = sys.stdin.read()
        settings = _common.settings()
        names = list(channel) if channel else list(settings.channels_for(service))
        if not names and message.strip():
            where = settings.path or "opskit.toml"
            raise UsageError(f"no notify channel configured: add a [notify.NAME] table to {where} and "
                             "list it in [opskit] notify, or pass --channel NAME")
        result = core.send(settings, _common.journal(), message, title=title, level=level,
                           service=service, channels=names)
        if as_json:
            _common.print_json(result.to_dict())
        else:
            ids = ", ".join(f"#{i}" for i in result.outbox_ids)
            for name in result.delivered:
                _common.console().print(f"delivered to {name} (outbox {ids})", markup=False)
        problem = result.problem()
        if problem:
            print(f"opskit: {problem}", file=sys.stderr)
            _common.exit_with(1)


def _render_row(row: dict[str, object]) -> str:
    head = [f"outbox #{row['id']}  {row['channel']}  {row['status']}  level {row['level']}  "
            f"created {row['created']}  attempts {row['attempts']}"]
    if row.get("delivered"):
        head.append(f"delivered {row['delivered']}" + (f"  remote id {row['remote_id']}" if row.get("remote_id") else ""))
    if row.get("last_error"):
        head.append(f"last error: {row['last_error']}")
    if row.get("service"):
        head.append(f"service: {row['service']}")
    if row.get("title"):
        head.append(f"title: {row['title']}")
    from opskit.base.text import shown  # only for --show

    # Rows queued before every message went through shown() (notify/announce.py) hold raw text.
    return shown("\n".join(head) + "\n\n" + str(row["message"]).rstrip("\n"), lines=True) + "\n"
