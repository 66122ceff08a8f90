"""A throwaway system account for a test that needs root to work for someone else."""

from __future__ import annotations

import contextlib
import pwd
import subprocess
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def throwaway_account(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A new system account (no home, no login shell), removed afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
