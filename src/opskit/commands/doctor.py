"""opskit doctor: check the set-up."""

from __future__ import annotations

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
        """Check the set-up: config, state dir, git, crontab, each service's repo, worktree and hooks.

        Example: opskit --config /etc/opskit/opskit.toml doctor
        """
        from opskit.views.doctor import run_checks

        checks = run_checks(_common.settings())
        failed = [c for c in checks if not c.ok and c.severity == "error"]
        if as_json:
            _common.print_json({"ok": not failed, "checks": [c.to_dict() for c in checks]})
        else:
            from rich.markup import escape

            con = _common.console()
            for c in checks:
                mark = "[green]✓[/green]" if c.ok else ("[red]✗[/red]" if c.severity == "error" else "[yellow]![/yellow]")
                line = f"{mark} {escape(c.name):<28} {escape(c.detail)}"
                if not c.ok and c.fix:
                    line += f"  [dim]→ {escape(c.fix)}[/dim]"
                con.print(line, soft_wrap=True)
        _common.exit_with(1 if failed else 0)
