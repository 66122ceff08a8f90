"""`opskit reactions` as text: one line per reaction, where it stands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BEHIND_WARN = 100  # events waiting past this: `opskit status` names the reaction


def needs_attention(row: dict[str, Any]) -> str | None:
    """Why `opskit status` should name this reaction, or None."""
    last = row.get("last") or {}
    if row.get("attempts"):
        return (f"reaction {row['name']} is failing on event #{last.get('event_id')} "
                f"({row['attempts']} failed run(s), next try {row.get('next_try') or 'now'})")
    if row.get("behind", 0) > BEHIND_WARN:
        return f"reaction {row['name']} is {row['behind']} events behind (is cron's `opskit react` installed?)"
    return None


def lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no reactions configured (add a [[reaction]] table to the config)"]
    out = []
    for r in rows:
        last = r.get("last")
        if last:
            how = f"last: {last.get('result')} on #{last.get('event_id')} at {last.get('ts')}"
            if last.get("reason") and last.get("result") != "ok":
                how += f" ({last['reason']})"
        else:
            how = "last: never ran"
        where = f"  service {r['service']}" if r.get("service") else ""
        if r.get("gate"):
            out.append(f"{r['name']}  gate before deploys{where}  {how}")
            continue
        cursor = f"#{r['cursor']}" if r.get("cursor") is not None else "not started"
        state = f"  failing ({r['attempts']} run(s), next try {r['next_try']})" if r.get("attempts") else ""
        gave = f"  gave up {r['gave_up']} time(s)" if r.get("gave_up") else ""
        out.append(f"{r['name']}  on {','.join(r['on'])}{where}  cursor {cursor}  behind {r['behind']}  "
                   f"{how}{state}{gave}")
    return out
