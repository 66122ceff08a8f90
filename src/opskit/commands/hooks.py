"""opskit hooks install|uninstall|status SERVICE."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from opskit.commands import _common

if TYPE_CHECKING:
    from opskit.wiring.hooks import HooksReport


def _show(report: HooksReport, as_json: bool, changes: bool) -> None:
    if as_json:
        _common.print_json(report.to_dict())
        return
    out = _common.console()

    def say(text: str) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)

    if changes:
        for c in report.changes:
            say(f"{c.action:<10} {c.where:<8} {c.name:<17} {c.path}"
                + (f"  ({c.detail})" if c.detail else ""))
    else:
        for s in report.states:
            extra = f"  (chains {s.chained.name})" if s.chained else ""
            say(f"{s.state:<10} {s.where:<8} {s.name:<17} {s.path}{extra}")
    for h in report.hooks_path:
        say(f"core.hooksPath: {h}")
    for n in report.notes:
        say(f"note: {n}")


def register(app: typer.Typer) -> None:
    hooks_app = typer.Typer(help="Install, remove and check opskit's git hooks.\n\n"
                            "Example: opskit --config /etc/opskit/opskit.toml hooks install primerouter",
                            no_args_is_help=True)
    app.add_typer(hooks_app, name="hooks")

    @hooks_app.command("install")
    def install(
        service: str = typer.Argument(..., help="Service name from the config."),
        hooks_path_ok: bool = typer.Option(
            False, "--hooks-path-ok",
            help="core.hooksPath is set on purpose: install into the folder it names."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Install pre-receive and post-receive into the service's bare repo (push mode) and
        pre-commit and pre-merge-commit into its worktree. Safe to run again; a hook already
        there is kept as NAME.pre-opskit and run first; core.hooksPath refuses (exit 2)
        unless --hooks-path-ok.

        Example: opskit --config /etc/opskit/opskit.toml hooks install primerouter
        """
        from opskit.wiring import hooks

        settings = _common.settings()
        report = hooks.install(settings, settings.service(service), hooks_path_ok=hooks_path_ok)
        _show(report, as_json, changes=True)
        _common.exit_with(0 if report.all_installed else 1)

    @hooks_app.command("uninstall")
    def uninstall(
        service: str = typer.Argument(..., help="Service name from the config."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Remove opskit's hooks and put back the hooks they displaced.

        Example: opskit hooks uninstall primerouter
        """
        from opskit.wiring import hooks

        settings = _common.settings()
        report = hooks.uninstall(settings, settings.service(service))
        _show(report, as_json, changes=True)
        _common.exit_with(0)

    @hooks_app.command("status")
    def status(
        service: str = typer.Argument(..., help="Service name from the config."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Each hook: installed, modified, missing or foreign; and core.hooksPath if set.
        Exit 1 unless every hook is installed as install would write it now.

        Example: opskit hooks status primerouter --json
        """
        from opskit.wiring import hooks

        settings = _common.settings()
        report = hooks.status(settings, settings.service(service))
        _show(report, as_json, changes=False)
        _common.exit_with(0 if report.all_installed else 1)
