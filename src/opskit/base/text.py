"""How opskit shows data it did not write: commit ids, branch names, subjects."""

from __future__ import annotations


def printable(s: str | None) -> str:
    """Data from git may hold non-UTF-8 bytes (surrogate-escaped): make it safe to journal,
    to hand to a subprocess and to print, without interpreting it."""
    if not s:
        return ""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def shown(s: str) -> str:
    """Text bound for a terminal with its control characters shown (`\\x1b`), not obeyed: a
    branch or file name can carry an escape sequence."""
    return s.translate(_CONTROLS)


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def short(sha: str | None) -> str:
    """A commit id as people read it in messages and tables; "-" for no commit."""
    return sha[:12] if sha else "(none)"
