"""opskit health-gate: probe a service until there is a verdict."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

import typer

from opskit.commands import _common

if TYPE_CHECKING:
    from opskit.deploy.health import ProbeResult

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def parse_seconds(option: str, text: str | None) -> float | None:
    """`2`, `0.5`, `500ms`, `2s`, `1m` → seconds; one-line UsageError otherwise."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        _common.usage(f"{option}: {text!r} is not a duration; use seconds like 2, 0.5, 500ms or 1m")
    value = float(m.group(1)) * _UNIT[m.group(2)]
    if value <= 0:
        _common.usage(f"{option} must be greater than 0, got {text!r}")
    return value


def parse_count(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        _common.usage(f"{option}: {text!r} is not a whole number of 1 or more; use e.g. 3")
    return int(text)


def register(app: typer.Typer) -> None:
    @app.command("health-gate")
    def health_gate(
        service: str = typer.Argument(None, help="Take the probe and its settings from "
                                      "[service.NAME.health]; options override them."),
        url: str = typer.Option(None, "--url", help="Probe: HTTP(S) GET this URL."),
        tcp: str = typer.Option(None, "--tcp", metavar="HOST:PORT", help="Probe: TCP connect."),
        cmd: str = typer.Option(None, "--cmd", help="Probe: run this shell command; exit 0 = healthy."),
        window: str = typer.Option(None, "--window", metavar="S",
                                   help="Seconds to watch before passing (default 60)."),
        period: str = typer.Option(None, "--period", metavar="S",
                                   help="Seconds between probes (default 2)."),
        timeout: str = typer.Option(None, "--timeout", metavar="S",
                                    help="Seconds one probe may take (default 2)."),
        failures: str = typer.Option(None, "--failures", metavar="N",
                                     help="Consecutive failed probes that fail the gate (default 3)."),
        startup: str = typer.Option(None, "--startup", metavar="S",
                                    help="Seconds allowed before the first healthy probe (default 30)."),
        expect_status: str = typer.Option(None, "--expect-status", metavar="LIST",
                                          help="Healthy statuses: 200,204 or 200-299 (default 200-399)."),
        expect_body: str = typer.Option(None, "--expect-body", metavar="REGEX",
                                        help="The body must match this regex."),
        as_json: bool = typer.Option(False, "--json", help="Print the verdict with every probe as JSON."),
    ) -> None:
        """Probe until healthy for --window, or fail fast. Exit 0 healthy, 1 unhealthy, 2 bad arguments.

        Example: opskit health-gate --url http://127.0.0.1:9400/health --window 30 --period 1
        """
        from opskit.base import bwrap
        from opskit.base.config import HealthSettings
        from opskit.deploy.health import gate, override, parse_expect_status, validate

        base = HealthSettings()
        cwd = None
        wrap, sandbox = None, None
        if service:
            svc = _common.settings().service(service)
            base = svc.health
            cwd = svc.worktree if svc.worktree.is_dir() else None
            if cmd is None and svc.health.cmd:
                # The service's own cmd probe comes from the pushed tree: sandboxed like the
                # deploy gate runs it. A --cmd given here is the operator's, and runs as given.
                wrap, sandbox = bwrap.probe_wrapper(_common.settings(), svc), svc.sandbox
        spec = override(
            base, url=url, tcp=tcp, cmd=cmd,
            window=parse_seconds("--window", window), period=parse_seconds("--period", period),
            timeout=parse_seconds("--timeout", timeout), startup=parse_seconds("--startup", startup),
            failures=parse_count("--failures", failures),
            expect_status=parse_expect_status(expect_status) if expect_status is not None else None,
            expect_body=expect_body,
        )
        if service and not spec.configured:
            _common.usage(f"service {service!r} has no health probe; add url, tcp or cmd to "
                          f"[service.{service}.health] or pass --url/--tcp/--cmd")
        # Check everything before the journal is opened: bad arguments write nothing.
        validate(spec)

        show = not as_json and sys.stdout.isatty()
        con = _common.console()
        if show:
            con.print(f"health-gate {spec.url or spec.tcp or spec.cmd}: window {spec.window:g}s, "
                      f"period {spec.period:g}s, startup {spec.startup:g}s, "
                      f"failures {spec.failures}", markup=False, soft_wrap=True)

        def progress(p: ProbeResult) -> None:
            mark = "[green]✓[/green]" if p.ok else "[red]✗[/red]"
            con.print(f"  {p.at:6.1f}s {mark} ", end="", soft_wrap=True)
            con.print(p.detail, markup=False, highlight=False, soft_wrap=True)

        verdict = gate(spec, journal=_common.journal(), service=service or None,
                       on_probe=progress if show else None, cwd=cwd, wrap=wrap, sandbox=sandbox)
        if as_json:
            _common.print_json(verdict.to_dict())
        else:
            word = "[green]healthy[/green]" if verdict.healthy else "[red]unhealthy[/red]"
            con.print(f"{word}: ", end="", soft_wrap=True)
            con.print(f"{verdict.target}: {verdict.reason}", markup=False, highlight=False,
                      soft_wrap=True)
        _common.exit_with(0 if verdict.healthy else 1)
