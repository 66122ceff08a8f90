"""The Markdown table bench/run.py prints and writes into bench/README.md."""

from __future__ import annotations

from collections.abc import Sequence

from common import Row

BEGIN = "<!-- bench:table:begin (written by bench/run.py --write) -->"
END = "<!-- bench:table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| # | measured | median (min–max, n) | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        what = r.what + (f" — {r.note}" if r.note else "")
        lines.append(f"| {_cell(r.bench)} | {_cell(what)} | {_cell(r.figure())} | {_cell(r.target)} | {met} |")
    return "\n".join(lines)


def splice(readme: str, block: str) -> str:
    """Replace what sits between the markers (or append the markers and block)."""
    inner = f"{BEGIN}\n{block.rstrip()}\n{END}"
    if BEGIN in readme and END in readme:
        head, _, rest = readme.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + inner + tail
    return readme.rstrip() + "\n\n" + inner + "\n"
