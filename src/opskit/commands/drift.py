"""opskit drift-scan: find dirty, bypassed or unlocked production worktrees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opskit.commands import _common

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    import typer  # the fast path (opskit/fastpath.py) runs this module without typer

    @app.command("drift-scan")
    def drift_scan(
        services: list[str] = typer.Argument(None, metavar="[SERVICE ...]",
                                             help="Services to scan (default: every configured one)."),
        heal: bool = typer.Option(False, "--heal", help="Save the drifted state to refs/opskit/drift/<UTC "
                                  "stamp>, then restore the last deployed commit."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
        no_notify: bool = typer.Option(False, "--no-notify", help="Look only: no events, no "
                                       "notifications, stored drift state untouched."),
    ) -> None:
        """Report per service worktree: modified, staged, deleted and untracked files; HEAD ahead,
        behind, diverged or detached against the canonical branch; commits the pipeline never
        deployed (bypasses); opskit's hooks missing, modified or switched off by core.hooksPath.
        Exit 0 clean, 1 drift, 2 bad input. Never changes a file without --heal.

        Example: opskit drift-scan primerouter --json
        """
        _common.exit_with(scan(services or (), heal, as_json, no_notify))


def scan(services: Sequence[str], heal: bool, as_json: bool, no_notify: bool) -> int:
    """The command itself, for typer and the fast path alike; returns the exit code."""
    from opskit.guard import drift

    report = drift.scan(_common.settings(), _common.journal(), services or (), heal=heal,
                         notify=not no_notify)
    if as_json:
        _common.print_json(report.to_dict())
    else:
        from opskit.views.drift import render_scan

        render_scan(report)
    return report.exit_code
