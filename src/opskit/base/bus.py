"""The trigger: a process that journals an event a reaction names starts `opskit react`.

No daemon: the dispatcher (reactions/dispatch.py) is started, detached, by whoever appends a
matching event, and by cron every minute as the safety net. This sits on every append, hooks
included, so it costs a dict lookup when no config with `[[reaction]]` tables was loaded, and
at most one start per process while the previous one still runs (coalesced). A dispatcher
already holding the lock makes the start a no-op: it reads the journal again after it lets the
lock go (dispatch.py), so an event committed before this check is never left to cron.

Standard library only (the hooks' fast path journals through storage/journal.py). Never
raises: `appended` returns the problem as text and the journal writes it down.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opskit.base.reactions_config import ReactionSettings

# The dispatcher's lock (base/lock.py): a service name cannot start with "_", so no service's
# deploy lock is ever this file.
LOCK = "_react"
# The write end of a pipe the dispatcher closes once it has tried the lock (dispatch.py): until
# then it has read nothing, so every event committed before that reaches it.
READY_FD = "OPSKIT_REACT_READY_FD"

_WATCH: dict[str, tuple[Path, tuple[ReactionSettings, ...]]] = {}
_starting: int | None = None  # the read end of our last start's pipe, while it has not taken the lock


def watch(state_dir: str | os.PathLike[str], config: Path, reactions: Sequence[ReactionSettings]) -> None:
    """Reactions of the config loaded for this state dir (config.py calls it)."""
    key = os.path.abspath(state_dir)
    if reactions:
        _WATCH[key] = (Path(os.path.abspath(config)), tuple(reactions))
    else:
        _WATCH.pop(key, None)


def appended(state_dir: str | os.PathLike[str], event_type: str, service: str | None,
             data: Mapping[str, Any]) -> str | None:
    """An event was committed: start the dispatcher when a reaction matches it. The problem,
    as one line, when it could not be started (cron's run picks the event up)."""
    if not _WATCH:
        return None
    w = _WATCH.get(os.path.abspath(state_dir))
    if w is None or data.get("stage") == "trigger":  # a trigger's own failure never triggers
        return None
    if not any(r.matches(event_type, service, data) for r in w[1]):
        return None
    try:
        start(Path(state_dir), w[0])
    except Exception as e:  # noqa: BLE001 — the step that emitted the event must go on
        from opskit.base.errors import redact  # only on this failure: the fast path stays small

        return redact(f"could not start `opskit react`: {type(e).__name__}: {e}")[:300]
    return None


def start(state_dir: Path, config: Path) -> int | None:
    """Start `opskit react` detached; its pid, or None when none is needed. Coalesced: the one
    we started last has not read the journal yet, or a dispatcher holds the lock (it reads the
    journal again after letting go of it). "Our child is alive" is not enough: it may be past
    its last read, on its way out."""
    global _starting
    if _starting is not None:
        try:
            if os.read(_starting, 1) == b"":
                os.close(_starting)  # it took the lock (or found it held): it is not waiting to read
                _starting = None
        except BlockingIOError:
            return None  # still starting: it will read this event
    from opskit.base import lock  # only when a reaction matched: the fast path stays small

    if lock.is_held(state_dir, LOCK):
        return None
    from opskit.base import proc, statefs  # subprocess and threads: only when a dispatcher is started

    log = Path(state_dir) / "logs" / "react.log"
    # Made by the state dir's rule before the spawn opens it again: never through a planted link,
    # and group-writable in a shared state dir, where root's cron and the push account both start one.
    statefs.mkdir(log.parent, state_dir)
    statefs.append_bytes(log, state_dir, b"")
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        env = proc.clean_env({"OPSKIT_STATE_DIR": os.fspath(os.path.abspath(state_dir)), READY_FD: str(w)})
        argv = [sys.executable, "-m", "opskit", "--config", os.fspath(config), "react", "--quiet"]
        pid = proc.spawn_detached(argv, log=log, cwd="/", env=env, pass_fds=(w,))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    _starting = r
    return pid


def ready() -> None:
    """In the dispatcher, once it has tried the lock: the process that started it may start another."""
    fd = os.environ.pop(READY_FD, None)
    if fd and fd.isdigit():
        try:
            os.close(int(fd))
        except OSError:
            pass
