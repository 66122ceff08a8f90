"""opskit drift-scan: find dirty, bypassed or unlocked production worktrees."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
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
        from opskit.guard.drift import scan

        report = scan(_common.settings(), _common.journal(), services or (), heal=heal,
                      notify=not no_notify)
        if as_json:
            _common.print_json(report.to_dict())
        else:
            out = _common.console()
            for rep in report.services:
                if rep.error:
                    _common.err_console().print(f"opskit: {rep.error}", markup=False, highlight=False,
                                                soft_wrap=True)
                    continue
                if rep.skipped:
                    state = f"skipped: {rep.skipped}"
                elif rep.drift:
                    state = f"drift ({len(rep.findings)})"
                else:
                    state = "clean"
                out.print(f"{rep.service}: {state}", markup=False, highlight=False, soft_wrap=True)
                for f in rep.findings:
                    out.print(f"  {f.kind:<20} {f.describe()}", markup=False, highlight=False, soft_wrap=True)
                if rep.healed:
                    h = rep.healed
                    out.print(f"  healed: drifted state saved in {h['ref']} ({h['saved'][:12]}); "
                              f"restored {h['restored'][:12]}"
                              + (f"; removed {len(h['removed'])} untracked" if h["removed"] else ""),
                              markup=False, highlight=False, soft_wrap=True)
                for note in rep.notes:
                    out.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
        _common.exit_with(report.exit_code)
