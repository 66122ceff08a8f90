"""How events look on a terminal and as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING
from collections.abc import Sequence

from opskit.storage.journal import Event

if TYPE_CHECKING:
    from rich.console import Console

_STYLE = {"fail": "red", "failed": "red", "blocked": "red", "unverified": "red", "missed": "red",
          "detected": "yellow", "needs-human": "yellow", "start": "cyan", "breakglass": "yellow",
          "frozen": "bold red"}


def summarize(data: dict[str, object], width: int = 90) -> str:
    parts = []
    for k, v in data.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        text = str(v).replace("\n", " ⏎ ")
        if len(text) > 60:
            text = text[:57] + "..."
        parts.append(f"{k}={text}")
    s = " ".join(parts)
    return s if len(s) <= width else s[: width - 3] + "..."


def render_events(events: Sequence[Event], *, as_json: bool, header: bool = True,
                  console: Console | None = None) -> None:
    if as_json:
        for ev in events:
            sys.stdout.write(json.dumps(ev.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from rich.markup import escape

    if console is None:
        from rich.console import Console

        console = Console(highlight=False)
    con = console
    if not events and header:
        con.print("no events")
        return
    for ev in events:
        outcome = ev.type.rsplit(".", 1)[-1]
        style = _STYLE.get(outcome, "green" if outcome in ("pass", "complete", "ok", "sent", "verified",
                                                            "cleared", "healed", "recovered") else "")
        svc = escape(ev.service or "-")
        kind = escape(f"{ev.type:<22}")
        if style:
            kind = f"[{style}]{kind}[/{style}]"
        line = f"{ev.id:>7}  {ev.ts}  {kind} {svc:<16} {escape(summarize(ev.data))}"
        con.print(line, markup=True, soft_wrap=True)
