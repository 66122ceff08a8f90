"""How a drift scan reads on a terminal: one line a service, one line a finding."""

from __future__ import annotations

import sys
from typing import TextIO

from opskit.base.text import shown
from opskit.guard.drift import ScanReport


def render_scan(report: ScanReport, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Plain text, no Rich: cron runs this every hour, and file names from a worktree are shown
    with their control characters escaped, never sent to the terminal."""
    out = out or sys.stdout
    err = err or sys.stderr
    for rep in report.services:
        if rep.error:
            err.write(shown(f"opskit: {rep.error}") + "\n")
            continue
        if rep.skipped:
            state = f"skipped: {rep.skipped}"
        elif rep.drift:
            state = f"drift ({len(rep.findings)})"
        else:
            state = "clean"
        lines = [f"{rep.service}: {state}"]
        lines += [f"  {f.kind:<20} {f.describe()}" for f in rep.findings]
        if rep.healed:
            h = rep.healed
            lines.append(f"  healed: drifted state saved in {h['ref']} ({h['saved'][:12]}); "
                         f"restored {h['restored'][:12]}"
                         + (f"; removed {len(h['removed'])} untracked" if h["removed"] else ""))
        lines += [f"  note: {note}" for note in rep.notes]
        out.write("".join(shown(line) + "\n" for line in lines))
    out.flush()
