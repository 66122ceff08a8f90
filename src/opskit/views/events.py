"""How events look on a terminal and as JSON lines."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from opskit.base.text import json_shown, shown
from opskit.storage.journal import Event

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


_SGR = {"red": "31", "yellow": "33", "cyan": "36", "green": "32", "bold red": "1;31"}


def _colour(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def render_events(events: Sequence[Event], *, as_json: bool, header: bool = True, out: TextIO | None = None,
                  hosts: bool = False) -> None:
    """One line an event (or one JSON object a line). Plain writes, no Rich: `opskit events`
    is read often and from scripts, and Rich's import alone is most of a command's start-up
    (bench/startup.py). `hosts`: read from a fleet journal, each line names its host."""
    out = out or sys.stdout
    if as_json:
        for ev in events:
            out.write(json_shown(json.dumps(ev.to_dict(), ensure_ascii=False)) + "\n")
        out.flush()
        return
    if not events and header:
        out.write("no events\n")
        out.flush()
        return
    colour = _colour(out)
    for ev in events:
        outcome = ev.type.rsplit(".", 1)[-1]
        style = _STYLE.get(outcome, "green" if outcome in ("pass", "complete", "ok", "sent", "verified",
                                                            "cleared", "healed", "recovered") else "")
        kind = shown(f"{ev.type:<22}")
        if style and colour:
            kind = f"\x1b[{_SGR[style]}m{kind}\x1b[0m"
        where = f"{shown(ev.host or '-'):<12} " if hosts else ""
        out.write(f"{ev.id:>7}  {ev.ts}  {where}{kind} {shown(ev.service or '-'):<16} {shown(summarize(ev.data))}\n")
    out.flush()


def unreachable_line(down: dict[str, object]) -> str:
    """The one stderr line of a fleet read that fell back to this host's own journal."""
    return shown(f"opskit: the fleet journal is unreachable since {down.get('since')} ({down.get('error')}); "
                 "showing this host's events only (they are forwarded once it is back)")
