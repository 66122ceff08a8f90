"""Who is acting: the name journaled for a decision, an unfreeze, a release, a break glass."""

from __future__ import annotations

import getpass
import os


def who() -> str:
    """The human behind the command: the one behind sudo when there is one, else the login."""
    user = os.environ.get("SUDO_USER")
    if user:
        return user
    try:
        return getpass.getuser()  # LOGNAME, USER, then the passwd entry
    except Exception:  # no passwd entry (containers): still say something true
        return f"uid {os.getuid()}"
