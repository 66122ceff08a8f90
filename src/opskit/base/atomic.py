"""Replacing a file so that a reader sees the old one or the new one, never half of either.

A push arriving mid-install runs the old hook or the new; cron reads the old cron.d file or
the new; `opskit add` leaves the config whole if it is killed. The temp file sits beside the
target (same filesystem, so the rename is atomic) under a dotted name (cron skips those), and
is removed on any failure. Mode and owner are set through the temp file's descriptor, never
by its name, which whoever can write the folder could swap for a link in between. Root never
calls this in a folder another account owns: that account does it (accounts.as_account).
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
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
