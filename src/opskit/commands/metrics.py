"""opskit metrics: Prometheus metrics from the journal, printed or written as a textfile."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics(
        textfile: Path = typer.Option(None, "--textfile", metavar="PATH",
                                      help="Write PATH (*.prom) atomically for node_exporter's textfile "
                                      "collector instead of printing."),
    ) -> None:
        """Every number `opskit status` shows, in Prometheus's text format, from the journal only:
        deploys and rollbacks by service and result, the last verdict and its time, frozen
        services, quarantined trees, the outbox by channel, drift, jobs' last success and
        failure, cron-check's last run, the heartbeat's last success, what needs attention.

        Example: opskit metrics --textfile /var/lib/node_exporter/textfile_collector/opskit.prom
        """
        from opskit.views.metrics import render, write_textfile  # prometheus_client: this command only

        text = render(_common.settings(), _common.journal())
        if textfile is None:
            sys.stdout.write(text)
            return
        write_textfile(textfile, text)
