"""One error hierarchy and one set of exit codes for every opskit command.

cli.py is the only place that turns these into process exit codes.
Hooks and cron entries act on the numbers, so they are a contract.
"""

from __future__ import annotations

import enum
import re
import threading


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # the check failed: unhealthy, drift, not landed, not delivered, blocked
    USAGE = 2  # usage or config error: clear message, nothing changed
    INTERNAL = 3  # unexpected error: traceback in the state dir, one line on stderr
    INTERRUPTED = 130


class OpsError(Exception):
    """An expected failure with a one-line message for the operator."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(OpsError):
    """Bad arguments: nothing was changed (exit 2)."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The config file is unreadable or invalid (exit 2)."""


class GitError(OpsError):
    """A git command failed; the message carries the command and its output tail."""


class LockBusy(OpsError):
    """Another process holds a lock we waited for too long."""


# --- secrets -------------------------------------------------------------------------------
# Webhook URLs and tokens must never reach output, events or tracebacks.
# Config loading registers every secret value here; every message that leaves opskit goes
# through redact().

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MASK = "***"
# Discord/Slack style webhook paths and basic-auth URLs are masked even when not registered.
_PATTERNS = [
    re.compile(r"(https?://[^/\s]*(?:discord(?:app)?\.com|slack\.com)/api/webhooks?/)[^\s'\"]+"),
    re.compile(r"(https?://hooks\.slack\.com/)[^\s'\"]+"),
    # user:password@ and a bare token@ (https://TOKEN@host/...) in any URL scheme git speaks
    re.compile(r"((?:https?|ssh|git|ftp)s?://)[^/\s@]+(?=@)"),
]


def register_secret(value: str | None) -> None:
    if value and len(value) >= 6:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, _MASK)
    for pat in _PATTERNS:
        text = pat.sub(lambda m: m.group(1) + _MASK, text)
    return text
