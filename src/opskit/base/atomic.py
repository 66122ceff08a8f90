"""Replacing a file so that a reader sees the old one or the new one, never half of either.

A push arriving mid-install runs the old hook or the new; cron reads the old cron.d file or
the new; `opskit add` leaves the config whole if it is killed. The temp file sits beside the
target (same filesystem, so the rename is atomic) under a dotted name (cron skips those), and
is removed on any failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str, *, mode: int, owner: tuple[int, int] | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
