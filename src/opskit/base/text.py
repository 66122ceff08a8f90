"""How opskit shows data it did not write: commit ids, branch names, subjects."""

from __future__ import annotations


def printable(s: str | None) -> str:
    """Data from git may hold non-UTF-8 bytes (surrogate-escaped): make it safe to journal,
    to hand to a subprocess and to print, without interpreting it."""
    if not s:
        return ""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def shown(s: str, *, lines: bool = False) -> str:
    """Text bound for a terminal or a message with its control characters shown (`\\x1b`,
    `\\u202e`), not obeyed: a branch name, a commit subject or a test's output can carry an
    escape sequence (C0, DEL, C1 such as U+009B, the 8-bit CSI) or a bidi override that makes
    the text read differently from what it is (tests/test_foundation.py). `lines=True` keeps newlines and tabs,
    for text of several lines (a message body, a log tail). Every terminal line and message
    body of data opskit did not write goes through here: one rule, one table."""
    return s.translate(_LINES if lines else _CONTROLS)


# C0, DEL and C1 as \xNN; the bidi embeddings, overrides, isolates and marks as \uNNNN; a
# surrogate-escaped byte (non-UTF-8 from git) as the byte it stands for, \xNN, since it cannot
# be written as UTF-8 and, raw, would reach a terminal as that byte (0x9b is a CSI there too).
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]},
    **{c: f"\\u{c:04x}" for c in _BIDI},
    **{c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)},
}
_LINES = {c: v for c, v in _CONTROLS.items() if c not in (0x09, 0x0A)}


def json_shown(text: str) -> str:
    """A JSON document bound for a terminal: DEL, C1, the bidi characters and lone surrogates
    written as JSON's own `\\uNNNN` escapes (json.dumps leaves them raw under ensure_ascii=False;
    C0 it escapes itself). A JSON reader parses the very same strings."""
    return text.translate(_JSON)


_JSON = {c: f"\\u{c:04x}" for c in [0x7F, *range(0x80, 0xA0), *_BIDI, *range(0xD800, 0xE000)]}


def short(sha: str | None) -> str:
    """A commit id as people read it in messages and tables; "-" for no commit."""
    return sha[:12] if sha else "(none)"
