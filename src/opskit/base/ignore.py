"""drift_ignore: which paths in a deployed worktree are the service's own (logs, caches, pid files).

Patterns mean what they mean in a `.gitignore` (gitignore(5)): `*.pid` matches at any depth,
`logs/` a folder named logs anywhere and everything in it, `/logs/` or `var/log/` (a slash
before the end) only from the worktree's root, `!keep.log` re-includes. The matching is
pathspec's implementation of git's rules, not one of our own: operators already know them,
and a second hand-written matcher is how deploy and drift came to disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathspec


@functools.lru_cache(maxsize=64)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    # Imported on first use: ~30 ms that a clean drift-scan or deploy (no untracked file to
    # match) should not pay at start-up.
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def ignored(path: str, patterns: Sequence[str]) -> bool:
    """Is `path` (relative to the worktree, `/`-separated; a folder may end in `/`) ignored?"""
    if not patterns:
        return False
    return bool(_spec(tuple(patterns)).match_file(path))
