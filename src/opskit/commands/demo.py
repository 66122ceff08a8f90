"""opskit demo: the whole self-healing loop in a throw-away sandbox."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from opskit.commands import _common

if TYPE_CHECKING:
    from rich.console import Console

    from opskit.demo.scenario import Fact, Mark
    from opskit.storage.journal import Event


class RichNarrator:
    """Readable in a terminal and in a CI log alike: no animation, no cursor tricks."""

    def __init__(self, console: Console) -> None:
        self.con = console

    def _plain(self, text: str, style: str | None = None) -> None:
        self.con.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def step(self, title: str) -> None:
        self.con.print()
        self._plain(f"── {title}", style="bold")

    def info(self, text: str) -> None:
        self._plain(f"  {text}")

    def output(self, line: str) -> None:
        self._plain(f"    {line}", style="red" if "✘" in line else ("green" if "✔" in line else "dim"))

    def fact(self, fact: Fact) -> None:
        mark, style = ("✔", "green") if fact.ok else ("✘", "bold red")
        self._plain(f"  {mark} {fact.name}: {fact.detail}", style=style)

    def timeline(self, marks: Sequence[Mark]) -> None:
        for m in marks:
            style = ("red" if m.type and m.type.endswith((".fail", ".blocked")) else
                     "green" if m.type in ("health.pass", "rollback.complete", "notify.sent") else None)
            self._plain(f"  +{m.at:5.1f}s  {m.what}", style=style)

    def events(self, events: Sequence[Event]) -> None:
        from opskit.views.events import render_events

        render_events(events, as_json=False)

    def message(self, title: str, content: str) -> None:
        from rich.panel import Panel
        from rich.text import Text

        self.con.print(Panel(Text(content), title=Text(f"Discord (local stand-in): {title}"),
                             title_align="left", expand=False))


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        keep: bool = typer.Option(False, "--keep", help="Keep the sandbox folder and print its path."),
        as_json: bool = typer.Option(False, "--json", help="Print the checked facts and timings as JSON."),
    ) -> None:
        """Run the whole self-healing loop in a throw-away sandbox: a bad feature branch is
        pushed, tested, reviewed and merged by opskit; its health gate fails, the merge is
        reverted, redeployed, announced, and re-pushing its tree is refused. Checks each of
        those facts; exit 0 only if the loop worked. Touches none of your state, config or
        crontab.

        Example: opskit demo
        """
        from opskit.demo.scenario import run_demo

        con = _common.console()
        if not as_json:
            con.print("opskit demo: the 03:57 incident, replayed in a sandbox on this machine", style="bold",
                      markup=False, highlight=False)
        result = run_demo(keep=keep, out=None if as_json else RichNarrator(con))
        if as_json:
            _common.print_json(result.to_dict())
            _common.exit_with(result.exit_code)
        con.print()
        took = result.timings.get("total", 0.0)
        if result.ok:
            con.print(f"✔ the loop worked: {len(result.facts)} facts checked in {took:.0f}s; "
                      "no human was needed to heal it, and one tap was enough to approve.", style="bold green", markup=False, highlight=False)
        else:
            names = ", ".join(f.name for f in result.failed)
            con.print(f"✘ the loop did NOT work: {names} (see above)", style="bold red", markup=False,
                      highlight=False)
        if result.kept:
            con.print(f"sandbox kept: {result.sandbox}\n  look around: opskit --config "
                      f"{result.sandbox}/etc/opskit.toml events; the service is stopped",
                      markup=False, highlight=False, soft_wrap=True)
        _common.exit_with(result.exit_code)
