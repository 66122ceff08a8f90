"""A command the user wrote: the message on stdin, title/level/service in the environment.

Exit 0 is delivery. 126/127 (not executable, not found) will not get better by waiting,
so they are permanent; any other failure is retried like a refused connection.
"""

from __future__ import annotations

from opskit.base import proc
from opskit.base.config import ChannelSettings
from opskit.base.errors import OpsError
from opskit.notify.base import Message, Outcome, clip


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    assert ch.command is not None
    env = proc.clean_env({
        "OPSKIT_TITLE": msg.heading,
        "OPSKIT_LEVEL": msg.level,
        "OPSKIT_SERVICE": msg.service or "",
        "OPSKIT_EVENT_ID": str(msg.event_id or ""),
        "OPSKIT_OUTBOX_ID": str(msg.outbox_id),
    })
    try:
        result = proc.run(proc.shell_argv(ch.command), input=msg.text, env=env, timeout=timeout)
    except OpsError as e:
        return Outcome.permanent(e.message)
    if result.ok:
        return Outcome.delivered(status=0)
    if result.timed_out:
        return Outcome.transient(f"command timed out after {timeout:.1f}s")
    last = next((ln.strip() for ln in reversed(result.tail) if ln.strip()), "")
    what = f"command exited {result.returncode}" + (f": {clip(last, 160)}" if last else "")
    if result.returncode in (126, 127):
        return Outcome.permanent(what, status=result.returncode)
    return Outcome.transient(what, status=result.returncode)
